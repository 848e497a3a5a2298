#include "norms/row_norms.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/parallel.h"

namespace pyprune {
namespace {

// Eight independent double accumulators: the additions of one row do not wait
// on each other, and a float32 value converted to double is exact, so the only
// roundings are the (double) additions: the sum is within about
// cols * 2^-53 relative of the exact one, far below float32's resolution.
template <class T>
double abs_sum(const T* x, int64_t n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) a[j] += std::fabs(static_cast<double>(x[i + j]));
  }
  for (; i < n; ++i) a[0] += std::fabs(static_cast<double>(x[i]));
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

}  // namespace

template <class T>
void row_abs_sum_cpu(const T* x, int64_t rows, int64_t cols, int64_t row_stride, T* out,
                     int threads) {
  if (rows <= 0) return;
  // below about 1M values one thread is faster than waking the pool
  const int use = rows * cols >= (int64_t{1} << 20) ? threads : 1;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, cols));
  parallel_for(rows, use, grain, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; ++r) out[r] = static_cast<T>(abs_sum(x + r * row_stride, cols));
  });
}

void row_abs_sum_many(const RowAbsSumJob* jobs, int64_t n, int threads) {
  if (n <= 0) return;
  std::vector<int64_t> first(static_cast<size_t>(n) + 1, 0);  // first global row of each job
  int64_t values = 0;
  for (int64_t j = 0; j < n; ++j) {
    first[j + 1] = first[j] + jobs[j].rows;
    values += jobs[j].rows * jobs[j].cols;
  }
  const int64_t total = first[n];
  const int use = values >= (int64_t{1} << 20) ? threads : 1;
  const int64_t avg_cols = std::max<int64_t>(1, values / std::max<int64_t>(1, total));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / avg_cols);
  parallel_for(total, use, grain, [&](int64_t b, int64_t e, int) {
    int64_t j = std::upper_bound(first.begin(), first.end(), b) - first.begin() - 1;
    for (; j < n && first[j] < e; ++j) {
      const RowAbsSumJob& job = jobs[j];
      const int64_t r0 = std::max(b, first[j]) - first[j], r1 = std::min(e, first[j + 1]) - first[j];
      for (int64_t r = r0; r < r1; ++r) {
        if (job.dtype == 0) {
          static_cast<float*>(job.out)[r] =
              static_cast<float>(abs_sum(static_cast<const float*>(job.x) + r * job.row_stride, job.cols));
        } else {
          static_cast<double*>(job.out)[r] = abs_sum(static_cast<const double*>(job.x) + r * job.row_stride, job.cols);
        }
      }
    }
  });
}

template void row_abs_sum_cpu<float>(const float*, int64_t, int64_t, int64_t, float*, int);
template void row_abs_sum_cpu<double>(const double*, int64_t, int64_t, int64_t, double*, int);

}  // namespace pyprune
