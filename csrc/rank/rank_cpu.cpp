// CPU entry point of the rank op: picks the kernel variant for this CPU and
// splits the batch over the thread pool (one workspace slot per block).
#include <algorithm>
#include <cstdint>

#include "common/cpu.h"
#include "common/parallel.h"
#include "rank/rank.h"

namespace pyprune {
namespace {

int64_t slot_doubles(int64_t rows, int64_t cols, DType dtype) {
#if defined(PYPRUNE_HAVE_AVX2_TU)
  if (cpu_use_avx2()) return detail::workspace_doubles_avx2(rows, cols, dtype);
#endif
  return detail::workspace_doubles_generic(rows, cols, dtype);
}

int64_t num_matrices(const RankJob& job) {
  int64_t n = 1;
  for (int d = 0; d < job.batch_ndim; ++d) n *= job.batch_sizes[d];
  return n;
}

}  // namespace

const char* rank_cpu_isa() { return cpu_use_avx2() ? "avx2" : "generic"; }

int64_t rank_cpu_workspace_bytes(int64_t rows, int64_t cols, DType dtype, int threads) {
  // Round each slot up to 64 bytes so every slot stays aligned.
  const int64_t slot = (slot_doubles(rows, cols, dtype) * 8 + 63) / 64 * 64;
  return slot * std::max(1, threads);
}

const char* rank_cpu(const RankJob& job, int threads, void* workspace) {
  const int64_t groups = (num_matrices(job) + kLanes - 1) / kLanes;
  threads = std::max(1, threads);
  const int64_t slot_bytes = rank_cpu_workspace_bytes(job.rows, job.cols, job.dtype, 1);
  // Work per group grows like n^2 m: small matrices need bigger blocks to pay
  // for a wake-up.
  const int64_t m = std::max(job.rows, job.cols), n = std::min(job.rows, job.cols);
  const int64_t grain = std::max<int64_t>(1, 20000 / std::max<int64_t>(1, n * n * m));
  const bool avx2 = cpu_use_avx2();
  parallel_for(groups, threads, grain, [&](int64_t g0, int64_t g1, int block) {
    double* ws = reinterpret_cast<double*>(static_cast<char*>(workspace) + slot_bytes * block);
#if defined(PYPRUNE_HAVE_AVX2_TU)
    if (avx2) {
      detail::rank_range_avx2(job, g0, g1, ws);
      return;
    }
#endif
    detail::rank_range_generic(job, g0, g1, ws);
  });
  return avx2 ? "avx2" : "generic";
}

}  // namespace pyprune
