// AVX2 build of the row L1 kernel (compiled with -mavx2, no FP contraction).
#define PYPRUNE_NORMS_NS norms_avx2
#include "norms/row_norms_kernel.h"

namespace pyprune {
namespace detail {
void row_abs_sum_rows_avx2(const RowAbsSumJob& job, int64_t r0, int64_t r1) { norms_avx2::rows(job, r0, r1); }
}  // namespace detail
}  // namespace pyprune
