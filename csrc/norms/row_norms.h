// Row-wise L1 norms of a matrix (the filter-norm criterion's hot loop).
#pragma once
#include <cstdint>

namespace pyprune {

// out[r] = sum_c |x[r * row_stride + c]| for r < rows, c < cols (columns
// contiguous), accumulated in double and rounded once to the input's type.
// T is float or double.  Rows are split across up to `threads` threads.
template <class T>
void row_abs_sum_cpu(const T* x, int64_t rows, int64_t cols, int64_t row_stride, T* out,
                     int threads);

}  // namespace pyprune
