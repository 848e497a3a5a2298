// Row-wise L1 norms of a matrix (the filter-norm criterion's hot loop).
#pragma once
#include <cstdint>

namespace pyprune {

// One matrix of row_abs_sum_many: float32 (dtype 0) or float64 (dtype 1).
struct RowAbsSumJob {
  const void* x = nullptr;
  int dtype = 0;
  int64_t rows = 0, cols = 0, row_stride = 0;
  void* out = nullptr;
};

// out[r] = sum_c |x[r * row_stride + c]| for r < rows, c < cols (columns
// contiguous), accumulated in double and rounded once to the input's type, for
// many matrices in one call (a model's layers): the rows of all jobs form one
// range split across up to `threads` threads once the total is large enough to
// pay for waking them.
void row_abs_sum_many(const RowAbsSumJob* jobs, int64_t n, int threads);

namespace detail {
// Rows [r0, r1) of one job, per instruction set (row_norms_{generic,avx2}.cpp).
void row_abs_sum_rows_generic(const RowAbsSumJob& job, int64_t r0, int64_t r1);
void row_abs_sum_rows_avx2(const RowAbsSumJob& job, int64_t r0, int64_t r1);
}  // namespace detail

}  // namespace pyprune
