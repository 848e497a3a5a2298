#include "select/select.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "common/cpu.h"
#include "common/parallel.h"
#include "select/select_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>  // _mm_sfence (SSE, part of x86-64)
#endif

namespace pyprune {
namespace {

// Walks the kept grid of one job in memory order, starting at flat index t.
struct Cursor {
  const SelectJob* job;
  int64_t idx[16];   // position in each dim's kept list
  int64_t src_off;   // byte offset of the current chunk in the source

  void seek(int64_t t) {
    const auto& dims = job->dims;
    src_off = 0;
    for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
      const int64_t n = dims[d].keep_len;
      idx[d] = t % n;
      t /= n;
      src_off += kept(d, idx[d]) * dims[d].stride;
    }
  }

  int64_t kept(int d, int64_t i) const {
    const SelectDim& dim = job->dims[d];
    return dim.keep ? dim.keep[i] : i;
  }

  void next() {
    const auto& dims = job->dims;
    for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
      const int64_t before = kept(d, idx[d]);
      if (++idx[d] < dims[d].keep_len) {
        src_off += (kept(d, idx[d]) - before) * dims[d].stride;
        return;
      }
      src_off -= before * dims[d].stride;  // wrap to index 0 (kept(d, 0) below)
      idx[d] = 0;
      src_off += kept(d, 0) * dims[d].stride;
    }
  }
};

// The AVX2 kernel for 36-byte chunks (3x3 float32 kernels), when this CPU has AVX2.
using Copy36Fn = char* (*)(char*, const char*, const int64_t*, int64_t, int64_t, int64_t, bool);

Copy36Fn copy36_fn() {
#if defined(PYPRUNE_HAVE_AVX2_TU)
  if (cpu_use_avx2()) return detail::select_copy36_avx2;
#endif
  return nullptr;
}

// Copies chunks [t0, t1) of a job with chunk size N known at compile time
// (N > 0) or at run time (N == 0).  The caller guarantees that no destination
// in the range overlaps a source in the range (or one not yet read).  Chunks
// are copied in order, a row of the innermost dimension at a time: stepping
// the cursor per chunk costs more than a small chunk's copy (a Linear's
// columns selected one float at a time).  `stream` lets the 36-byte kernel
// write with streaming stores (the caller fences after the range).
template <int64_t N>
void copy_range_impl(const SelectJob& job, int64_t t0, int64_t t1, bool stream) {
  Cursor c{&job, {}, 0};
  c.seek(t0);
  const int64_t chunk = N > 0 ? N : job.chunk_bytes;
  static const Copy36Fn copy36 = N == 36 ? copy36_fn() : nullptr;
  char* dst = job.dst + t0 * chunk;
  const char* src = job.src;
  auto copy = [&](const char* s) {
    if (N > 0) {
      std::memcpy(dst, s, static_cast<size_t>(N));  // inlined as a few vector moves
    } else if (dst != s) {
      std::memcpy(dst, s, static_cast<size_t>(chunk));
    }
    dst += chunk;
  };
  const int last = static_cast<int>(job.dims.size()) - 1;
  if (last < 0) {  // one chunk: the whole tensor
    if (t0 < t1) copy(src);
    return;
  }
  const SelectDim& in = job.dims[static_cast<size_t>(last)];
  for (int64_t t = t0; t < t1;) {
    const int64_t i0 = c.idx[last];
    const int64_t i1 = std::min(in.keep_len, i0 + (t1 - t));
    const char* row = src + c.src_off - c.kept(last, i0) * in.stride;
    if (N == 36 && copy36 != nullptr && in.keep) {
      dst = copy36(dst, row, in.keep, i0, i1, in.stride, stream);
    } else if (in.keep) {
      for (int64_t i = i0; i < i1; ++i) copy(row + in.keep[i] * in.stride);
    } else {
      for (int64_t i = i0; i < i1; ++i) copy(row + i * in.stride);
    }
    t += i1 - i0;
    if (t < t1) {  // the row is done: move to the last chunk of it, then step
      c.idx[last] = i1 - 1;
      c.src_off = (row - src) + c.kept(last, i1 - 1) * in.stride;
      c.next();
    }
  }
}

// Small chunks are the common case of conv weights selected along dim 1
// (3x3 float32 = 36 bytes): a constant-size copy avoids a call per chunk.
void copy_range(const SelectJob& job, int64_t t0, int64_t t1, bool stream) {
  if (t0 >= t1) return;
  switch (job.chunk_bytes) {
    case 1: copy_range_impl<1>(job, t0, t1, stream); break;
    case 2: copy_range_impl<2>(job, t0, t1, stream); break;
    case 4: copy_range_impl<4>(job, t0, t1, stream); break;
    case 8: copy_range_impl<8>(job, t0, t1, stream); break;
    case 16: copy_range_impl<16>(job, t0, t1, stream); break;
    case 18: copy_range_impl<18>(job, t0, t1, stream); break;   // 3x3 half
    case 32: copy_range_impl<32>(job, t0, t1, stream); break;
    case 36: copy_range_impl<36>(job, t0, t1, stream); break;   // 3x3 float
    case 50: copy_range_impl<50>(job, t0, t1, stream); break;   // 5x5 half
    case 72: copy_range_impl<72>(job, t0, t1, stream); break;   // 3x3 double
    case 100: copy_range_impl<100>(job, t0, t1, stream); break; // 5x5 float
    case 196: copy_range_impl<196>(job, t0, t1, stream); break; // 7x7 float
    default: copy_range_impl<0>(job, t0, t1, stream); break;
  }
}

constexpr int64_t kParallelBytes = 1 << 20;  // below this a job runs on one thread
// Jobs writing at least this much use streaming stores where a kernel has them
// (select_copy36_avx2): the output would not stay in the caches anyway.
constexpr int64_t kStreamBytes = 8 << 20;

// Orders the streaming stores of this thread before whatever follows (the
// end of a wave, the end of the call).
void stream_fence() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_sfence();
#endif
}

void run_parallel(const SelectJob& job, int64_t t0, int64_t t1, int threads, bool stream) {
  const int64_t bytes = (t1 - t0) * job.chunk_bytes;
  const int use = bytes >= kParallelBytes ? threads : 1;
  const int64_t grain = std::max<int64_t>(1, (kParallelBytes / 4) / std::max<int64_t>(1, job.chunk_bytes));
  parallel_for(t1 - t0, use, grain, [&](int64_t b, int64_t e, int) {
    copy_range(job, t0 + b, t0 + e, stream);
    if (stream) stream_fence();
  });
}

void run_job(const SelectJob& job, int threads) {
  if (job.dims.size() > 16) throw std::invalid_argument("select: more than 16 dimensions");
  const int64_t bytes = select_job_bytes(job);
  const int64_t total = bytes / std::max<int64_t>(1, job.chunk_bytes);
  if (total == 0 || job.chunk_bytes == 0) return;
  const bool stream = bytes >= kStreamBytes;
  if (job.dst != job.src) {
    run_parallel(job, 0, total, threads, stream);
    return;
  }
  // In place.  dst(t) = t * chunk and src(t) are both increasing and the gap
  // src(t) - dst(t) is a non-decreasing multiple of chunk, so: skip the prefix
  // where the gap is zero, then copy in waves [ta, tb) with tb * chunk <=
  // src(ta): every destination of a wave lies below every source of the wave
  // and of the waves after it.
  Cursor c{&job, {}, 0};
  const int64_t chunk = job.chunk_bytes;
  int64_t ta = 0;
  // Binary search for the first chunk that moves (gap is monotone).
  int64_t lo = 0, hi = total;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    c.seek(mid);
    if (c.src_off == mid * chunk) lo = mid + 1; else hi = mid;
  }
  ta = lo;
  while (ta < total) {
    c.seek(ta);
    const int64_t tb = std::min<int64_t>(total, c.src_off / chunk);
    run_parallel(job, ta, tb, threads, stream);
    ta = tb;
  }
}

}  // namespace

int64_t select_job_bytes(const SelectJob& job) {
  int64_t n = job.chunk_bytes;
  for (const auto& d : job.dims) n *= d.keep_len;
  return n;
}

void select_cpu(std::vector<SelectJob>& jobs, int threads) {
  for (const auto& job : jobs) run_job(job, threads);
}

}  // namespace pyprune
