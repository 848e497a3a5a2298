// CPU entry points of the row L1 kernel: pick the build for this CPU and split
// the rows over the thread pool.
#include "norms/row_norms.h"

#include <algorithm>
#include <vector>

#include "common/cpu.h"
#include "common/parallel.h"

namespace pyprune {
namespace {

using RowsFn = void (*)(const RowAbsSumJob&, int64_t, int64_t);

RowsFn rows_fn() {
#if defined(PYPRUNE_HAVE_AVX2_TU)
  if (cpu_use_avx2()) return detail::row_abs_sum_rows_avx2;
#endif
  return detail::row_abs_sum_rows_generic;
}

}  // namespace

void row_abs_sum_many(const RowAbsSumJob* jobs, int64_t n, int threads) {
  if (n <= 0) return;
  const RowsFn fn = rows_fn();
  // The rows of all jobs form one range; `first` is each job's first global row and
  // `before` the values (rows * cols) of the jobs before it.
  std::vector<int64_t> first(static_cast<size_t>(n) + 1, 0), before(static_cast<size_t>(n) + 1, 0);
  for (int64_t j = 0; j < n; ++j) {
    first[j + 1] = first[j] + jobs[j].rows;
    before[j + 1] = before[j] + jobs[j].rows * jobs[j].cols;
  }
  const int64_t values = before[n];
  auto run_rows = [&](int64_t b, int64_t e) {  // global rows [b, e)
    int64_t j = std::upper_bound(first.begin(), first.end(), b) - first.begin() - 1;
    for (; j < n && first[j] < e; ++j)
      fn(jobs[j], std::max(b, first[j]) - first[j], std::min(e, first[j + 1]) - first[j]);
  };
  // below about 1M values one thread is faster than waking the pool
  if (threads <= 1 || values < (int64_t{1} << 20)) {
    run_rows(0, first[n]);
    return;
  }
  // Split by values, not rows: a model's early layers have many short rows, its
  // late ones long rows.  Block k starts at the row where k / blocks of the values lie.
  const int blocks = threads;
  std::vector<int64_t> bound(static_cast<size_t>(blocks) + 1, first[n]);
  for (int k = 0; k < blocks; ++k) {
    const int64_t target = values / blocks * k;
    int64_t j = std::upper_bound(before.begin(), before.end(), target) - before.begin() - 1;
    j = std::min<int64_t>(j, n - 1);
    const int64_t cols = std::max<int64_t>(1, jobs[j].cols);
    bound[k] = std::min(first[j + 1], first[j] + (target - before[j]) / cols);
  }
  parallel_for(blocks, threads, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t k = b; k < e; ++k) run_rows(bound[k], bound[k + 1]);
  });
}

}  // namespace pyprune
