// Portable build of the row L1 kernel (baseline instruction set).
#define PYPRUNE_NORMS_NS norms_generic
#include "norms/row_norms_kernel.h"

namespace pyprune {
namespace detail {
void row_abs_sum_rows_generic(const RowAbsSumJob& job, int64_t r0, int64_t r1) { norms_generic::rows(job, r0, r1); }
}  // namespace detail
}  // namespace pyprune
