// AVX2 + FMA build of the rank kernels (compiled with -mavx2 -mfma on x86-64).
#define PYPRUNE_KERNEL_NS kernel_avx2
#include "rank/rank_kernel.h"

namespace pyprune {
namespace detail {
int64_t workspace_doubles_avx2(int64_t rows, int64_t cols, DType dtype) {
  return kernel_avx2::workspace_doubles(rows, cols, dtype);
}
void rank_range_avx2(const RankJob& job, int64_t g0, int64_t g1, double* ws) {
  kernel_avx2::rank_range(job, g0, g1, ws);
}
}  // namespace detail
}  // namespace pyprune
