// Channel compaction on a CUDA device: every job of a call in one launch.
//
// The jobs travel as a device-side table of int64 words (built on the host by
// select_cuda_pack, copied to the device by the caller):
//
//   [0] number of jobs J   [1] number of blocks   [2..3] unused
//   [4 .. 4+J]             first block of each job (prefix sums; J+1 entries)
//   records (kRecordWords each, from word kHeaderWords + J + 1 rounded to even):
//     src, dst, chunk_bytes, log2(unit), ndims, total_units, units_per_chunk, 0,
//     then per dimension (memory order, <= 16): keep_len, stride_bytes, keep_ptr
//   the kept indices of every dimension, back to back (keep_ptr points here).
//
// A job copies its kept chunks, split into `unit`-byte words (the largest
// power of two <= 16 dividing the chunk size, both base addresses and every
// stride), to the dense destination: unit u of the job goes to dst + u * unit.
// Blocks are assigned to jobs in proportion to their size; each block walks
// its job with a block-stride loop.  Sources and destinations must not
// overlap: in-place compaction goes through a scratch buffer (see
// pyprune/ops/select.py).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "select/select.h"

namespace pyprune {
namespace {

constexpr int kThreads = 256;
constexpr int kHeaderWords = 4;
constexpr int kRecordWords = 8 + 3 * 16;
constexpr int64_t kUnitsPerBlock = kThreads * 4;
constexpr int64_t kMaxBlocksPerJob = 1 << 16;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("pyprune select_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

__host__ __device__ __forceinline__ int64_t records_start(int64_t jobs) { return (kHeaderWords + jobs + 1 + 1) & ~int64_t(1); }

// Unit u of a job: chunk t = u / units_per_chunk, split into one index per
// dimension (innermost last).  The index math runs in I: 32-bit unsigned when
// the job's unit count fits (then every count below it does too), as 64-bit
// integer division is a long instruction sequence on the GPU and this is most
// of the work per unit; 64-bit otherwise.  Byte offsets are always 64-bit.
template <class W, class I>
__device__ __forceinline__ void copy_units(const int64_t* rec, I first, I step) {
  const char* src = reinterpret_cast<const char*>(rec[0]);
  W* dst = reinterpret_cast<W*>(rec[1]);
  const int nd = static_cast<int>(rec[4]);
  const I total = static_cast<I>(rec[5]), upc = static_cast<I>(rec[6]);
  const int64_t* dims = rec + 8;
  for (I u = first; u < total; u += step) {
    I t = upc == 1 ? u : u / upc;
    const I w = u - t * upc;
    int64_t off = static_cast<int64_t>(w) * static_cast<int64_t>(sizeof(W));
    for (int d = nd - 1; d >= 0; --d) {
      const I len = static_cast<I>(dims[3 * d]);
      const I q = t / len;
      const I i = t - q * len;
      t = q;
      const int64_t* keep = reinterpret_cast<const int64_t*>(dims[3 * d + 2]);
      off += (keep ? __ldg(keep + i) : static_cast<int64_t>(i)) * dims[3 * d + 1];
    }
    dst[u] = *reinterpret_cast<const W*>(src + off);
  }
}

// 32-bit index math when u + step cannot wrap: total < 2^31 and step (at most
// kMaxBlocksPerJob * kThreads = 2^24) below 2^31 too.
static_assert(kMaxBlocksPerJob * kThreads < (int64_t(1) << 31), "a 32-bit u + step could wrap");
template <class W>
__device__ __forceinline__ void copy_job(const int64_t* rec, int64_t first, int64_t step) {
  if (rec[5] <= INT32_MAX) {
    copy_units<W, uint32_t>(rec, static_cast<uint32_t>(first), static_cast<uint32_t>(step));
  } else {
    copy_units<W, int64_t>(rec, first, step);
  }
}

__global__ void __launch_bounds__(kThreads) select_kernel(const int64_t* __restrict__ table) {
  __shared__ int64_t rec[kRecordWords];
  __shared__ int64_t job_s, first_s, nblocks_s;
  const int64_t njobs = table[0];
  const int64_t* starts = table + kHeaderWords;
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) {
    // Last job whose first block is <= b (jobs without blocks are skipped).
    int64_t lo = 0, hi = njobs - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (starts[mid] <= b) lo = mid; else hi = mid - 1;
    }
    job_s = lo;
    first_s = starts[lo];
    nblocks_s = starts[lo + 1] - starts[lo];
  }
  __syncthreads();
  const int64_t* r = table + records_start(njobs) + job_s * kRecordWords;
  for (int i = threadIdx.x; i < kRecordWords; i += kThreads) rec[i] = r[i];
  __syncthreads();
  const int64_t first = (b - first_s) * kThreads + threadIdx.x;
  const int64_t step = nblocks_s * kThreads;
  switch (rec[3]) {
    case 4: copy_job<uint4>(rec, first, step); break;
    case 3: copy_job<uint2>(rec, first, step); break;
    case 2: copy_job<uint32_t>(rec, first, step); break;
    case 1: copy_job<uint16_t>(rec, first, step); break;
    default: copy_job<uint8_t>(rec, first, step); break;
  }
}

int64_t job_units_log2(const SelectJob& job) {
  uint64_t g = static_cast<uint64_t>(job.chunk_bytes) | reinterpret_cast<uintptr_t>(job.src) |
               reinterpret_cast<uintptr_t>(job.dst) | 16u;
  for (const auto& d : job.dims) g |= static_cast<uint64_t>(d.stride);
  int64_t s = 0;
  while (s < 4 && !(g & (uint64_t(1) << s))) ++s;
  return s;
}

}  // namespace

int64_t select_cuda_table_words(const std::vector<SelectJob>& jobs) {
  int64_t words = records_start(static_cast<int64_t>(jobs.size())) + kRecordWords * static_cast<int64_t>(jobs.size());
  for (const auto& job : jobs)
    for (const auto& d : job.dims)
      if (d.keep) words += d.keep_len;
  return words;
}

int64_t select_cuda_pack(const std::vector<SelectJob>& jobs, int64_t* host, uintptr_t device_table, int64_t words) {
  if (words < select_cuda_table_words(jobs)) throw std::invalid_argument("select_cuda_pack: table too small");
  const int64_t nj = static_cast<int64_t>(jobs.size());
  std::fill(host, host + words, int64_t(0));
  int64_t* starts = host + kHeaderWords;
  int64_t* rec = host + records_start(nj);
  int64_t keep_at = records_start(nj) + kRecordWords * nj;
  int64_t blocks = 0;
  for (int64_t j = 0; j < nj; ++j, rec += kRecordWords) {
    const SelectJob& job = jobs[static_cast<size_t>(j)];
    if (job.dims.size() > 16) throw std::invalid_argument("select_cuda: more than 16 dimensions");
    const int64_t shift = job_units_log2(job);
    const int64_t upc = job.chunk_bytes >> shift;
    int64_t chunks = 1;
    for (const auto& d : job.dims) chunks *= d.keep_len;
    const int64_t total = job.chunk_bytes > 0 ? chunks * upc : 0;
    starts[j] = blocks;
    blocks += std::min<int64_t>((total + kUnitsPerBlock - 1) / kUnitsPerBlock, kMaxBlocksPerJob);
    rec[0] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(job.src));
    rec[1] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(job.dst));
    rec[2] = job.chunk_bytes;
    rec[3] = shift;
    rec[4] = static_cast<int64_t>(job.dims.size());
    rec[5] = total;
    rec[6] = std::max<int64_t>(upc, 1);
    for (size_t d = 0; d < job.dims.size(); ++d) {
      const SelectDim& dim = job.dims[d];
      rec[8 + 3 * d] = dim.keep_len;
      rec[8 + 3 * d + 1] = dim.stride;
      if (dim.keep) {
        std::copy(dim.keep, dim.keep + dim.keep_len, host + keep_at);
        rec[8 + 3 * d + 2] = static_cast<int64_t>(device_table + static_cast<uintptr_t>(keep_at) * 8);
        keep_at += dim.keep_len;
      }
    }
  }
  starts[nj] = blocks;
  host[0] = nj;
  host[1] = blocks;
  return blocks;
}

void select_cuda(const int64_t* device_table, int64_t blocks, int device, void* stream) {
  if (blocks <= 0) return;
  if (blocks > INT32_MAX) throw std::invalid_argument("select_cuda: too many blocks");
  check(cudaSetDevice(device), "cudaSetDevice");
  select_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(device_table);
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace pyprune
