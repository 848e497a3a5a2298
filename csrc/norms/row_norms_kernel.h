// The row L1 kernel, compiled once per instruction set: row_norms_generic.cpp and
// row_norms_avx2.cpp define PYPRUNE_NORMS_NS and include this file, so the two
// builds of every function here have distinct names.
#include <cmath>
#include <cstdint>

#include "norms/row_norms.h"

#ifndef PYPRUNE_NORMS_NS
#error "define PYPRUNE_NORMS_NS before including row_norms_kernel.h"
#endif

namespace pyprune {
namespace PYPRUNE_NORMS_NS {

// Eight independent double accumulators: the additions of one row do not wait
// on each other (and vectorise as such; the order of every accumulator's
// additions is the scalar one, so both builds give the same bits), and a float32
// value converted to double is exact, so the only roundings are the (double)
// additions: the sum is within about cols * 2^-53 relative of the exact one, far
// below float32's resolution.
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

// Rows [r0, r1) of one job.
inline void rows(const RowAbsSumJob& job, int64_t r0, int64_t r1) {
  if (job.dtype == 0) {
    const float* x = static_cast<const float*>(job.x);
    float* out = static_cast<float*>(job.out);
    for (int64_t r = r0; r < r1; ++r) out[r] = static_cast<float>(abs_sum(x + r * job.row_stride, job.cols));
  } else {
    const double* x = static_cast<const double*>(job.x);
    double* out = static_cast<double*>(job.out);
    for (int64_t r = r0; r < r1; ++r) out[r] = abs_sum(x + r * job.row_stride, job.cols);
  }
}

}  // namespace PYPRUNE_NORMS_NS
}  // namespace pyprune
