// Portable build of the rank kernels (baseline instruction set).
#define PYPRUNE_KERNEL_NS kernel_generic
#include "rank/rank_kernel.h"

namespace pyprune {
namespace detail {
int64_t workspace_doubles_generic(int64_t rows, int64_t cols, DType dtype) {
  return kernel_generic::workspace_doubles(rows, cols, dtype);
}
void rank_range_generic(const RankJob& job, int64_t g0, int64_t g1, double* ws) {
  kernel_generic::rank_range(job, g0, g1, ws);
}
}  // namespace detail
}  // namespace pyprune
