// Shared pieces of the CUDA rank kernels: rank_cuda.cu (one block per matrix)
// and rank_cuda_small.cu (one warp segment per matrix, min(M, N) <= 32).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "rank/rank.h"

namespace pyprune {
namespace cuda_rank {

constexpr int kTile = 32;     // Gram output tile (kTile x kTile entries)
constexpr int kPanel = 16;    // input rows per shared-memory panel
constexpr int kTileLd = 33;   // padded leading dimension of a panel row
constexpr int kMaxWarps = 8;  // NT <= 256

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so later calls are not blamed
    throw std::runtime_error(std::string("pyprune rank_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

// Kernel arguments: RankJob's fields, in the logical m x n view (m >= n).
struct Args {
  const void* data;
  int64_t batch_sizes[16];
  int64_t batch_strides[16];
  int batch_ndim;
  int64_t nmat;
  int m, n;
  int64_t sr, sc;  // element (r, c) of the logical view at r * sr + c * sc
  double atol, rtol;
  int64_t* out;
  int* flag;  // set to 1 when a matrix holds NaN/Inf (nullptr: not wanted)
};

struct F16 { uint16_t bits; };
struct BF16 { uint16_t bits; };

__device__ __forceinline__ double to_double(float v) { return v; }
__device__ __forceinline__ double to_double(F16 v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ __forceinline__ double to_double(BF16 v) { return __uint_as_float(static_cast<uint32_t>(v.bits) << 16); }

__device__ __forceinline__ double dmax(double a, double b) { return a > b ? a : b; }

// Power of two closest below 1/x for x > 0 (1 for x == 0 or non-finite).
__device__ __forceinline__ double pow2_recip(double x) {
  if (!(x > 0.0) || !isfinite(x)) return 1.0;
  int e;
  frexp(x, &e);
  return ldexp(1.0, -e);
}

__device__ __forceinline__ int64_t matrix_offset(const Args& a, int64_t b) {
  int64_t off = 0;
#pragma unroll
  for (int d = 15; d >= 0; --d) {
    if (d < a.batch_ndim) {
      const int64_t s = a.batch_sizes[d];
      off += (b % s) * a.batch_strides[d];
      b /= s;
    }
  }
  return off;
}

__device__ __forceinline__ void mark_non_finite(const Args& a, int64_t b) {
  a.out[b] = -1;
  if (a.flag != nullptr) *a.flag = 1;  // every writer stores the same value
}

__device__ __forceinline__ int64_t col_start(int64_t j, int64_t n) { return j * n - j * (j - 1) / 2; }

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double warp_max(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = dmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Block-wide reductions; every thread gets the same result (same order), and
// `red` (kMaxWarps * 3 doubles) is free again on return.
template <int NT>
__device__ __forceinline__ double block_sum(double x, double* red) {
  constexpr int W = NT / 32;
  x = warp_sum(x);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
  __syncthreads();
  double r = 0.0;
#pragma unroll
  for (int q = 0; q < W; ++q) r += red[q];
  __syncthreads();
  return r;
}

// Reduces (max, max, max) or (max, sum) triples: op bit i set = sum, else max.
template <int NT>
__device__ __forceinline__ void block_reduce3(double& a, double& b, double& c, unsigned sum_mask, double* red) {
  constexpr int W = NT / 32;
  a = (sum_mask & 1u) ? warp_sum(a) : warp_max(a);
  b = (sum_mask & 2u) ? warp_sum(b) : warp_max(b);
  c = (sum_mask & 4u) ? warp_sum(c) : warp_max(c);
  if ((threadIdx.x & 31) == 0) {
    red[threadIdx.x >> 5] = a;
    red[kMaxWarps + (threadIdx.x >> 5)] = b;
    red[2 * kMaxWarps + (threadIdx.x >> 5)] = c;
  }
  __syncthreads();
  double ra = red[0], rb = red[kMaxWarps], rc = red[2 * kMaxWarps];
#pragma unroll
  for (int q = 1; q < W; ++q) {
    ra = (sum_mask & 1u) ? ra + red[q] : dmax(ra, red[q]);
    rb = (sum_mask & 2u) ? rb + red[kMaxWarps + q] : dmax(rb, red[kMaxWarps + q]);
    rc = (sum_mask & 4u) ? rc + red[2 * kMaxWarps + q] : dmax(rc, red[2 * kMaxWarps + q]);
  }
  __syncthreads();
  a = ra;
  b = rb;
  c = rc;
}

// Householder vector for x = (alpha, x[1:]) with sigma = ||x[1:]||^2; see
// rank_kernel.h.
struct House {
  double tau, beta, scal;
};
__device__ __forceinline__ House householder(double alpha, double sigma) {
  if (sigma > 0.0) {
    const double nrm = sqrt(alpha * alpha + sigma);
    const double beta = alpha >= 0.0 ? -nrm : nrm;
    return {(beta - alpha) / beta, beta, 1.0 / (alpha - beta)};
  }
  return {0.0, alpha, 1.0};
}

// Number of eigenvalues <= x of the symmetric tridiagonal matrix with diagonal
// d (nullptr: zero) and squared off-diagonal e2 (LAPACK dlaebz pivmin rule).
__device__ __forceinline__ int count_le(const double* d, const double* e2, int n, double x, double pivmin) {
  double q = (d ? d[0] : 0.0) - x;
  if (fabs(q) < pivmin) q = -pivmin;
  int cnt = q <= 0.0;
  for (int i = 1; i < n; ++i) {
    q = ((d ? d[i] : 0.0) - x) - e2[i - 1] / q;
    if (fabs(q) < pivmin) q = -pivmin;
    cnt += q <= 0.0;
  }
  return cnt;
}

// Largest eigenvalue in [lo, hi]: each step every thread counts at one of NT
// equispaced interior points; the bracket becomes the piece above the highest
// point that still has an eigenvalue above it.
// The threshold is tol(lambda_max) with lambda_max somewhere in [lo, hi] and
// the count is monotone in the threshold, so when the counts at tol(lo) and
// tol(hi) agree (the usual case: no eigenvalue near the threshold) that is the
// answer and the bisection for lambda_max can be skipped.  Threads 0 and 1
// count; returns the common count, or -1 when they differ (block-uniform).
template <int NT>
__device__ __forceinline__ int settled_count(const double* d, const double* e2, int n, double thr_lo,
                                             double thr_hi, double pivmin, unsigned* masks) {
  if (threadIdx.x < 2) masks[threadIdx.x] = static_cast<unsigned>(count_le(d, e2, n, threadIdx.x ? thr_hi : thr_lo, pivmin));
  __syncthreads();
  const unsigned c_lo = masks[0], c_hi = masks[1];
  __syncthreads();  // masks is reused by largest_eigenvalue
  return c_lo == c_hi ? static_cast<int>(c_lo) : -1;
}

template <int NT>
__device__ __forceinline__ double largest_eigenvalue(const double* d, const double* e2, int n, double lo,
                                                     double hi, double pivmin, unsigned* masks) {
  constexpr int W = NT / 32;
  const int tid = threadIdx.x;
  for (double shrink = 1.0; shrink < 262144.0; shrink *= NT + 1) {  // 4^9 = 2^18 (kBisectIters)
    const double w = (hi - lo) / (NT + 1);
    const double x = lo + (tid + 1) * w;
    const bool above = n - count_le(d, e2, n, x, pivmin) > 0;
    const unsigned ball = __ballot_sync(0xffffffffu, above);
    if ((tid & 31) == 0) masks[tid >> 5] = ball;
    __syncthreads();
    int top = -1;
#pragma unroll
    for (int q = 0; q < W; ++q)
      if (masks[q]) top = q * 32 + 31 - __clz(static_cast<int>(masks[q]));
    __syncthreads();
    const double new_lo = top >= 0 ? lo + (top + 1) * w : lo;
    const double new_hi = top + 1 < NT ? lo + (top + 2) * w : hi;
    lo = new_lo;
    hi = new_hi;
  }
  return 0.5 * (lo + hi);
}


// rank_cuda_small.cu: whether the warp-segment kernel serves this shape and dtype, and its launch.
bool warp_path(int64_t rows, int64_t cols, DType dtype);
void launch_small(DType dtype, const Args& args, cudaStream_t stream);

}  // namespace cuda_rank
}  // namespace pyprune
