// Batched matrix rank on a CUDA device: the algorithms of rank_kernel.h (see
// rank.h for the contract), one thread block per matrix.
//
//  * float32 / float16 / bfloat16: Gram matrix of the smaller side in float64
//    (32 x 32 output tiles, the input streamed through shared memory in
//    16-row panels; each entry is summed over the rows in order, so the Gram
//    matrix is bit-identical to the CPU's: every product is exact), then
//    Householder tridiagonalisation of the packed lower Gram matrix (the block
//    cooperates on symv and syr2), then Sturm counts.
//  * float64: Householder bidiagonalisation of the column-major matrix, then
//    Sturm counts on the 2n x 2n Golub-Kahan tridiagonal matrix.
//  * lambda_max / sigma_max: every thread of the block evaluates one shift, so
//    each step cuts the bracket into NT + 1 pieces (the CPU quadrisects); the
//    loop stops once the bracket shrank by >= 2^18, as much as the CPU's 9
//    quadrisections.
//
// Per-matrix storage (a "slot": the matrix plus a few vectors) lives in
// dynamic shared memory when it fits the device's opt-in limit, else in a
// global workspace the caller allocates (one slot per resident block; the grid
// then strides over the matrices).  Everything runs on the caller's stream
// with no host synchronisation; matrices holding NaN/Inf get rank -1.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "rank/rank.h"

namespace pyprune {
namespace {

constexpr int kTile = 32;     // Gram output tile (kTile x kTile entries)
constexpr int kPanel = 16;    // input rows per shared-memory panel
constexpr int kTileLd = 33;   // padded leading dimension of a panel row
constexpr int kMaxWarps = 8;  // NT <= 256

void check(cudaError_t err, const char* what) {
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

// ---------------------------------------------------------------------------
// Gram path.  Slot: packed lower G (n(n+1)/2), d, e, v, p (n each).

template <int NT, class T>
__global__ void __launch_bounds__(NT, 512 / NT) rank_gram_kernel(Args a, double* ws, int64_t slot, int use_smem) {
  extern __shared__ __align__(16) double dyn[];
  __shared__ double xa[kPanel * kTileLd];
  __shared__ double xb[kPanel * kTileLd];
  __shared__ double red[3 * kMaxWarps];
  __shared__ unsigned masks[kMaxWarps];
  constexpr int W = NT / 32;
  constexpr int ACC = kTile * kTile / NT;
  constexpr int ACCP = ACC < 8 ? ACC : 8;
  const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
  const int m = a.m, n = a.n;
  const int64_t packed = static_cast<int64_t>(n) * (n + 1) / 2;
  double* G = use_smem ? dyn : ws + static_cast<int64_t>(blockIdx.x) * slot;
  double* d = G + packed;
  double* e = d + n;
  double* v = e + n;
  double* p = v + n;
  // Panel loads: let consecutive threads walk the unit-stride dimension.
  const bool cols_fast = a.sc == 1 || a.sr != 1;
  const int ntiles = (n + kTile - 1) / kTile;

  for (int64_t b = blockIdx.x; b < a.nmat; b += gridDim.x) {
    const T* base = static_cast<const T*>(a.data) + matrix_offset(a, b);

    // G = X^T X, tile (I, J) with I >= J; entry (I*32 + lane, J*32 + wid + W*u).
    // A thread holds at most 8 accumulators (ACC / 8 passes per tile when NT < 128).
    for (int J = 0; J < ntiles; ++J) {
      for (int I = J; I < ntiles; ++I) {
        for (int pass = 0; pass < ACC / ACCP; ++pass) {
          double acc[ACCP];
#pragma unroll
          for (int u = 0; u < ACCP; ++u) acc[u] = 0.0;
          for (int r0 = 0; r0 < m; r0 += kPanel) {
            for (int q = tid; q < kPanel * kTile; q += NT) {
              const int rr = cols_fast ? q / kTile : q % kPanel;
              const int cc = cols_fast ? q % kTile : q / kPanel;
              const int r = r0 + rr, ca = I * kTile + cc, cb = J * kTile + cc;
              const bool rok = r < m;
              xa[rr * kTileLd + cc] = (rok && ca < n) ? to_double(base[r * a.sr + ca * a.sc]) : 0.0;
              if (I != J) xb[rr * kTileLd + cc] = (rok && cb < n) ? to_double(base[r * a.sr + cb * a.sc]) : 0.0;
            }
            __syncthreads();
            const double* xbp = (I != J ? xb : xa) + wid + W * ACCP * pass;
#pragma unroll 1
            for (int rr = 0; rr < kPanel; ++rr) {
              const double xv = xa[rr * kTileLd + lane];
#pragma unroll
              for (int u = 0; u < ACCP; ++u) acc[u] = fma(xbp[rr * kTileLd + W * u], xv, acc[u]);
            }
            __syncthreads();
          }
          const int ra = I * kTile + lane;
#pragma unroll
          for (int u = 0; u < ACCP; ++u) {
            const int cb = J * kTile + wid + W * (ACCP * pass + u);
            if (ra < n && cb <= ra) G[col_start(cb, n) + (ra - cb)] = acc[u];
          }
        }
      }
    }
    __syncthreads();

    // Finiteness (squares of these types are finite in float64, so the
    // diagonal is finite iff the matrix is) and exact power-of-two scaling.
    double maxdiag = 0.0, chk = 0.0, unused = 0.0;
    for (int j = tid; j < n; j += NT) {
      const double g = G[col_start(j, n)];
      maxdiag = dmax(maxdiag, g);
      chk += g - g;
    }
    block_reduce3<NT>(maxdiag, chk, unused, 2u, red);
    if (chk != 0.0) {  // NaN: uniform over the block
      if (tid == 0) a.out[b] = -1;
      continue;
    }
    const double s = pow2_recip(maxdiag);
    for (int64_t i = tid; i < packed; i += NT) G[i] *= s;
    __syncthreads();

    // Householder tridiagonalisation of the packed lower G.
    for (int k = 0; k + 2 < n; ++k) {
      const int64_t ck = col_start(k, n);
      const int len = n - k - 1;
      const double* x = G + ck + 1;
      double part = 0.0;
      for (int i = 1 + tid; i < len; i += NT) part += x[i] * x[i];
      const double sigma = block_sum<NT>(part, red);
      const House h = householder(x[0], sigma);
      if (tid == 0) {
        d[k] = G[ck];
        e[k] = h.beta;
      }
      for (int i = tid; i < len; i += NT) v[i] = i == 0 ? 1.0 : x[i] * h.scal;
      __syncthreads();
      // p = tau * A v, A the trailing block: row i of a symmetric matrix
      // stored as packed lower columns (A(i, j) = column min(i,j), offset |i-j|).
      const int64_t c0 = col_start(k + 1, n);
      double pv = 0.0;
      for (int i = tid; i < len; i += NT) {
        const int64_t ci = col_start(k + 1 + i, n);
        int64_t cj = c0;
        double t = 0.0;
        for (int j = 0; j < len; ++j) {
          const int64_t addr = j <= i ? cj + (i - j) : ci + (j - i);
          t = fma(G[addr], v[j], t);
          cj += n - (k + 1 + j);
        }
        p[i] = h.tau * t;
        pv += p[i] * v[i];
      }
      pv = block_sum<NT>(pv, red);
      const double K = 0.5 * h.tau * pv;
      for (int i = tid; i < len; i += NT) p[i] -= K * v[i];  // p is now w
      __syncthreads();
      // A -= v w^T + w v^T on the packed trailing block: one warp per column.
      for (int jj = wid; jj < len; jj += W) {
        double* col = G + col_start(k + 1 + jj, n);
        const double wj = p[jj], vj = v[jj];
        for (int s2 = lane; s2 < len - jj; s2 += 32) col[s2] -= v[jj + s2] * wj + p[jj + s2] * vj;
      }
      __syncthreads();
    }
    if (tid == 0) {
      if (n >= 2) {
        d[n - 2] = G[col_start(n - 2, n)];
        e[n - 2] = G[col_start(n - 2, n) + 1];
      }
      d[n - 1] = G[col_start(n - 1, n)];
    }
    __syncthreads();

    // Sturm counts.
    double* e2 = v;
    double maxd = 0.0, hi = 0.0, maxe2 = 0.0;
    for (int i = tid; i < n; i += NT) {
      const double left = i > 0 ? fabs(e[i - 1]) : 0.0;
      const double right = i + 1 < n ? fabs(e[i]) : 0.0;
      maxd = dmax(maxd, d[i]);
      hi = dmax(hi, d[i] + left + right);
      if (i + 1 < n) {
        e2[i] = e[i] * e[i];
        maxe2 = dmax(maxe2, e2[i]);
      }
    }
    block_reduce3<NT>(maxd, hi, maxe2, 0u, red);  // also publishes e2
    const double pivmin = DBL_MIN * dmax(1.0, maxe2);
    // G is positive semidefinite: |e_i| <= max d <= lambda_max, so hi <= 3 lambda_max.
    const double lo = dmax(maxd, hi * (1.0 / 3.0));
    const double lmax = largest_eigenvalue<NT>(d, e2, n, lo, hi, pivmin, masks);
    if (tid == 0) {
      const double thr = dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * lmax);
      a.out[b] = n - count_le(d, e2, n, thr, pivmin);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Small Gram path: float32/16/bf16 with n <= 32.  A block-per-matrix kernel
// spends most of its time in barriers and shared-memory round trips on such
// sizes, so here a segment of NB lanes (NB = 8, 16 or 32: 32 / NB matrices
// per warp) owns one matrix and lane i of the segment keeps row i of the Gram
// matrix in registers.  Only warp-level exchanges: shuffles within the
// segment and a small per-warp shared-memory area (__syncwarp).  n < NB is
// padded with zero rows/columns of G, which no step ever changes (their v and
// w entries are exactly 0); the Householder steps stop at the real n.
//
// Arithmetic: G is summed over the rows in order, like the CPU's (every
// product is exact, so G is bit-identical); the tridiagonalisation keeps the
// full symmetric G (each lane its row) and so rounds differently from the
// CPU's packed version, which the contract (singular values >= 1% away from
// tol) absorbs.

constexpr int kWarpsPerBlock = 4;
constexpr int kStageRows = 8;  // input rows staged per round (256 values per warp)

template <int NB>
__device__ __forceinline__ double seg_sum(double x) {
#pragma unroll
  for (int o = NB / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <int NB>
__device__ __forceinline__ double seg_max(double x) {
#pragma unroll
  for (int o = NB / 2; o > 0; o >>= 1) x = dmax(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

template <int NB, class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock, NB == 32 ? 4 : (NB == 16 ? 5 : 6)) rank_gram_warp_kernel(Args a) {
  constexpr int MPW = 32 / NB;                  // matrices per warp
  constexpr int SEG_X = kStageRows * NB + 2;    // doubles per segment in the stage (+2: other banks)
  constexpr int SEG_V = NB + 1;                 // double2 per segment in the v/w exchange
  constexpr int SEG_T = NB + 1;                 // doubles per segment of d and e^2
  constexpr unsigned kFull = 0xffffffffu;
  __shared__ __align__(16) double xs_all[kWarpsPerBlock][MPW * SEG_X];
  __shared__ __align__(16) double2 vw_all[kWarpsPerBlock][MPW * SEG_V];
  __shared__ double d_all[kWarpsPerBlock][MPW * SEG_T];
  __shared__ double e2_all[kWarpsPerBlock][MPW * SEG_T];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int seg = lane / NB, i = lane % NB;
  const int m = a.m, n = a.n;
  double* xs = xs_all[warp];
  const double* xseg = xs + seg * SEG_X;
  double2* vw = vw_all[warp] + seg * SEG_V;
  double* dsm = d_all[warp] + seg * SEG_T;
  double* esm = e2_all[warp] + seg * SEG_T;
  const bool cols_fast = a.sc == 1 || a.sr != 1;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock * MPW;

  for (int64_t b0 = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp) * MPW; b0 < a.nmat; b0 += step) {
    const int64_t b = b0 + seg;
    const bool active = b < a.nmat;
    const int64_t my_off = active ? matrix_offset(a, b) : 0;

    // G = X^T X: lane i accumulates row i over the input rows, in order.
    double g[NB];
#pragma unroll
    for (int c = 0; c < NB; ++c) g[c] = 0.0;
    for (int r0 = 0; r0 < m; r0 += kStageRows) {
#pragma unroll
      for (int t = 0; t < kStageRows * NB * MPW / 32; ++t) {
        constexpr int kPerSeg = kStageRows * NB;
        const int q = t * 32 + lane;
        const int s = (t * 32) / kPerSeg;  // the same for every lane (kPerSeg is a multiple of 32)
        const int w = q - s * kPerSeg;
        const int rr = cols_fast ? w / NB : w % kStageRows;
        const int cc = cols_fast ? w % NB : w / kStageRows;
        const int64_t off = __shfl_sync(kFull, my_off, s * NB);
        const int r = r0 + rr;
        double val = 0.0;
        if (r < m && cc < n && b0 + s < a.nmat)
          val = to_double(static_cast<const T*>(a.data)[off + r * a.sr + cc * a.sc]);
        xs[s * SEG_X + rr * NB + cc] = val;
      }
      __syncwarp();
#pragma unroll
      for (int rr = 0; rr < kStageRows; ++rr) {
        const double xi = xseg[rr * NB + i];
#pragma unroll
        for (int c = 0; c < NB; c += 2) {
          const double2 xc = *reinterpret_cast<const double2*>(xseg + rr * NB + c);
          g[c] = fma(xi, xc.x, g[c]);
          g[c + 1] = fma(xi, xc.y, g[c + 1]);
        }
      }
      __syncwarp();
    }

    // Finiteness from the diagonal (squares of these types are finite in
    // float64) and exact power-of-two scaling, per segment.
    double diag = 0.0;
#pragma unroll
    for (int c = 0; c < NB; ++c)
      if (c == i) diag = g[c];
    const double chk = seg_sum<NB>(diag - diag);
    const bool bad = chk != 0.0;
    const double s = pow2_recip(seg_max<NB>(bad ? 0.0 : diag));
#pragma unroll
    for (int c = 0; c < NB; ++c) g[c] = bad ? 0.0 : g[c] * s;

    // Householder tridiagonalisation; lane i ends with d_i and e_i.
    double dreg = 0.0, ereg = 0.0;
#pragma unroll
    for (int k = 0; k < NB - 1; ++k) {
      const double xk = g[k];  // G(i, k)
      if (i == k) dreg = xk;
      const double below = __shfl_sync(kFull, xk, k + 1, NB);  // G(k+1, k)
      if (k + 2 < n) {  // the same for every lane
        const double sigma = seg_sum<NB>(i > k + 1 ? xk * xk : 0.0);
        const House h = householder(below, sigma);
        if (i == k) ereg = h.beta;
        const double vi = i == k + 1 ? 1.0 : (i > k + 1 ? xk * h.scal : 0.0);
        vw[i].x = vi;
        __syncwarp();
        double t0 = 0.0, t1 = 0.0;  // p_i = tau * G(i, k+1:) v
#pragma unroll
        for (int j = k + 1; j < NB; ++j) {
          if ((j - k) & 1) t0 = fma(g[j], vw[j].x, t0);
          else t1 = fma(g[j], vw[j].x, t1);
        }
        const double pi = i > k ? h.tau * (t0 + t1) : 0.0;
        const double K = 0.5 * h.tau * seg_sum<NB>(pi * vi);
        const double wi = pi - K * vi;
        vw[i].y = wi;
        __syncwarp();
#pragma unroll
        for (int j = k + 1; j < NB; ++j) {  // G -= v w^T + w v^T
          const double2 q = vw[j];
          g[j] -= vi * q.y + wi * q.x;
        }
        __syncwarp();
      } else if (i == k) {
        ereg = below;
      }
    }
    if (i == NB - 1) dreg = g[NB - 1];

    // Sturm counts on (d, e^2).
    dsm[i] = dreg;
    esm[i] = ereg * ereg;
    const double e_left = __shfl_up_sync(kFull, ereg, 1, NB);
    const double maxd = seg_max<NB>(dreg);
    const double hi0 = seg_max<NB>(dreg + (i > 0 ? fabs(e_left) : 0.0) + (i + 1 < n ? fabs(ereg) : 0.0));
    const double maxe2 = seg_max<NB>(i + 1 < n ? ereg * ereg : 0.0);
    __syncwarp();
    const double pivmin = DBL_MIN * dmax(1.0, maxe2);
    // G is positive semidefinite: |e_i| <= max d <= lambda_max, so hi <= 3 lambda_max.
    double lo = dmax(maxd, hi0 * (1.0 / 3.0)), hi = hi0;
    // Each round every lane counts at one of NB equispaced interior points; stop
    // once the bracket shrank by >= 2^18, as the CPU's 9 quadrisections do.
    for (double shrink = 1.0; shrink < 262144.0; shrink *= NB + 1) {
      const double wdt = (hi - lo) / (NB + 1);
      const double x = lo + (i + 1) * wdt;
      const bool above = n - count_le(dsm, esm, n, x, pivmin) > 0;
      const unsigned ball = __ballot_sync(kFull, above);
      const unsigned bits = NB == 32 ? ball : (ball >> (seg * NB)) & ((1u << (NB % 32)) - 1u);
      const int top = bits ? 31 - __clz(static_cast<int>(bits)) : -1;
      const double new_lo = top >= 0 ? lo + (top + 1) * wdt : lo;
      const double new_hi = top + 1 < NB ? lo + (top + 2) * wdt : hi;
      lo = new_lo;
      hi = new_hi;
    }
    const double lmax = 0.5 * (lo + hi);
    if (i == 0 && active) {
      const double thr = dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * lmax);
      a.out[b] = bad ? -1 : n - count_le(dsm, esm, n, thr, pivmin);
    }
    __syncwarp();
  }
}

// ---------------------------------------------------------------------------
// Bidiagonal path (float64).  Slot: X column-major (m*n), d, e, u (n each),
// off2 (2n).

template <int NT>
__global__ void __launch_bounds__(NT, 512 / NT) rank_bidiag_kernel(Args a, double* ws, int64_t slot, int use_smem) {
  extern __shared__ __align__(16) double dyn[];
  __shared__ double red[3 * kMaxWarps];
  __shared__ unsigned masks[kMaxWarps];
  constexpr int W = NT / 32;
  const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
  const int m = a.m, n = a.n;
  const int64_t mn = static_cast<int64_t>(m) * n;
  double* X = use_smem ? dyn : ws + static_cast<int64_t>(blockIdx.x) * slot;
  double* d = X + mn;
  double* e = d + n;
  double* u = e + n;
  double* off2 = u + n;  // 2n
  const bool rows_fast = a.sr == 1 || a.sc != 1;

  for (int64_t b = blockIdx.x; b < a.nmat; b += gridDim.x) {
    const double* base = static_cast<const double*>(a.data) + matrix_offset(a, b);
    double maxabs = 0.0, chk = 0.0, unused = 0.0;
    for (int64_t q = tid; q < mn; q += NT) {
      const int64_t r = rows_fast ? q % m : q / n;
      const int64_t c = rows_fast ? q / m : q % n;
      const double val = base[r * a.sr + c * a.sc];
      X[c * m + r] = val;
      maxabs = dmax(maxabs, fabs(val));
      chk += val - val;
    }
    block_reduce3<NT>(maxabs, chk, unused, 2u, red);
    if (chk != 0.0) {
      if (tid == 0) a.out[b] = -1;
      continue;
    }
    const double s = pow2_recip(maxabs);
    for (int64_t q = tid; q < mn; q += NT) X[q] *= s;
    __syncthreads();

    for (int k = 0; k < n; ++k) {
      // Left reflector: zero X[k+1:, k]; the column then holds v (v[0] = 1 implied).
      double* col = X + static_cast<int64_t>(k) * m + k;
      const int len = m - k;
      double part = 0.0;
      for (int i = 1 + tid; i < len; i += NT) part += col[i] * col[i];
      const double sigma = block_sum<NT>(part, red);
      const House h = householder(col[0], sigma);
      if (tid == 0) d[k] = h.beta;
      for (int i = 1 + tid; i < len; i += NT) col[i] *= h.scal;
      __syncthreads();
      for (int j = k + 1 + wid; j < n; j += W) {  // one warp per column
        double* cj = X + static_cast<int64_t>(j) * m + k;
        double t = lane == 0 ? cj[0] : 0.0;
        for (int i = 1 + lane; i < len; i += 32) t += col[i] * cj[i];
        t = h.tau * warp_sum(t);
        if (lane == 0) cj[0] -= t;
        for (int i = 1 + lane; i < len; i += 32) cj[i] -= t * col[i];
      }
      __syncthreads();
      if (k + 1 >= n) break;
      // Right reflector: zero X[k, k+2:].
      const int len2 = n - k - 1;
      double part2 = 0.0;
      for (int t = 1 + tid; t < len2; t += NT) {
        const double ut = X[static_cast<int64_t>(k + 1 + t) * m + k];
        part2 += ut * ut;
      }
      const double sigma2 = block_sum<NT>(part2, red);
      const House g = householder(X[static_cast<int64_t>(k + 1) * m + k], sigma2);
      if (tid == 0) e[k] = g.beta;
      for (int t = tid; t < len2; t += NT) u[t] = t == 0 ? 1.0 : X[static_cast<int64_t>(k + 1 + t) * m + k] * g.scal;
      __syncthreads();
      // Rows k+1.. of the trailing block: y_i = row_i . u, then row_i -= tau u^T y_i.
      // Each thread owns whole rows, so no barrier is needed in between.
      const int rows = m - k - 1;
      double* c1 = X + static_cast<int64_t>(k + 1) * m + (k + 1);
      for (int i = tid; i < rows; i += NT) {
        double yi = 0.0;
        for (int t = 0; t < len2; ++t) yi = fma(c1[static_cast<int64_t>(t) * m + i], u[t], yi);
        for (int t = 0; t < len2; ++t) c1[static_cast<int64_t>(t) * m + i] -= (g.tau * u[t]) * yi;
      }
      __syncthreads();
    }

    // Golub-Kahan tridiagonal: zero diagonal, off-diagonal d0, e0, d1, ..., d_{n-1}.
    const int nn = 2 * n;
    double maxo = 0.0, maxo2 = 0.0, hi = 0.0;
    for (int i = tid; i < nn - 1; i += NT) {
      const double o = (i % 2 == 0) ? d[i / 2] : e[i / 2];
      off2[i] = o * o;
      maxo = dmax(maxo, fabs(o));
      maxo2 = dmax(maxo2, off2[i]);
    }
    __syncthreads();
    for (int i = tid; i < nn; i += NT) {
      const double left = i > 0 ? sqrt(off2[i - 1]) : 0.0;
      const double right = i + 1 < nn ? sqrt(off2[i]) : 0.0;
      hi = dmax(hi, left + right);
    }
    block_reduce3<NT>(maxo, maxo2, hi, 0u, red);
    const double pivmin = DBL_MIN * dmax(1.0, maxo2);
    // Every entry of the bidiagonal is <= sigma_max and hi <= 2 max|o|.
    const double lo = dmax(maxo, 0.5 * hi);
    const double smax = largest_eigenvalue<NT>(nullptr, off2, nn, lo, hi, pivmin, masks);
    if (tid == 0) {
      const double thr = dmax(a.atol * s, a.rtol * smax);
      a.out[b] = nn - count_le(nullptr, off2, nn, thr, pivmin);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Host side.

struct Plan {
  int threads = 32;
  bool f64 = false;
  int64_t slot = 0;        // doubles per matrix
  bool smem = false;       // slot in dynamic shared memory
  size_t dyn_bytes = 0;
  int64_t grid = 0;
  int64_t ws_bytes = 0;    // global workspace (0 with smem)
};

struct DeviceProps {
  int sms = 0;
  int smem_optin = 0;
};

DeviceProps device_props(int device) {
  DeviceProps p;
  check(cudaDeviceGetAttribute(&p.sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&p.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  return p;
}

int threads_for(int64_t size) {
  if (size <= 32) return 32;
  if (size <= 64) return 64;
  if (size <= 128) return 128;
  return 256;
}

// Static shared memory of each kernel (upper bound, bytes).
constexpr size_t kGramStatic = (2 * kPanel * kTileLd + 3 * kMaxWarps) * sizeof(double) + kMaxWarps * 4;
constexpr size_t kBidiagStatic = 3 * kMaxWarps * sizeof(double) + kMaxWarps * 4;

Plan make_plan(int64_t rows, int64_t cols, DType dtype, int64_t nmat, int device) {
  Plan pl;
  const int64_t m = std::max(rows, cols), n = std::min(rows, cols);
  if (m > INT_MAX / 2 || n < 1) throw std::invalid_argument("rank_cuda: matrix dimensions out of range");
  pl.f64 = dtype == DType::kFloat64;
  pl.threads = threads_for(pl.f64 ? m : n);
  pl.slot = pl.f64 ? m * n + 5 * n : n * (n + 1) / 2 + 4 * n;
  pl.slot = (pl.slot + 1) & ~int64_t(1);  // keep slots 16-byte aligned
  const DeviceProps props = device_props(device);
  const size_t stat = pl.f64 ? kBidiagStatic : kGramStatic;
  const int64_t bytes = pl.slot * static_cast<int64_t>(sizeof(double));
  // 1 KB per block is reserved by the system on sm_80+.
  pl.smem = bytes + static_cast<int64_t>(stat) + 1024 <= props.smem_optin;
  if (pl.smem) {
    pl.dyn_bytes = static_cast<size_t>(bytes);
    pl.grid = std::min<int64_t>(nmat, INT_MAX);
  } else {
    // One workspace slot per block; two blocks per SM keep the workspace
    // (and the L2 footprint) bounded.
    pl.grid = std::min<int64_t>(nmat, 2 * static_cast<int64_t>(std::max(1, props.sms)));
    pl.ws_bytes = pl.grid * bytes;
  }
  return pl;
}

template <int NT>
void launch_nt(const Plan& pl, DType dtype, const Args& args, double* ws, cudaStream_t stream) {
  void (*kernel)(Args, double*, int64_t, int) = nullptr;
  switch (dtype) {
    case DType::kFloat32: kernel = rank_gram_kernel<NT, float>; break;
    case DType::kFloat16: kernel = rank_gram_kernel<NT, F16>; break;
    case DType::kBFloat16: kernel = rank_gram_kernel<NT, BF16>; break;
    case DType::kFloat64: kernel = rank_bidiag_kernel<NT>; break;
  }
  if (pl.dyn_bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(pl.dyn_bytes)),
          "cudaFuncSetAttribute");
  kernel<<<static_cast<unsigned>(pl.grid), NT, pl.dyn_bytes, stream>>>(args, ws, pl.slot, pl.smem ? 1 : 0);
  check(cudaGetLastError(), "kernel launch");
}

// The small Gram path (rank_gram_warp_kernel) serves float32/16/bf16 with
// min(rows, cols) <= 32.  PYPRUNE_CUDA_RANK_WARP=0 in the environment turns it
// off (the block-per-matrix kernel then runs every size), for comparisons.
bool warp_path(int64_t rows, int64_t cols, DType dtype) {
  static const bool enabled = [] {
    const char* v = std::getenv("PYPRUNE_CUDA_RANK_WARP");
    return !(v != nullptr && std::strcmp(v, "0") == 0);
  }();
  return enabled && dtype != DType::kFloat64 && std::min(rows, cols) <= 32;
}

template <int NB>
void launch_warp(DType dtype, const Args& args, cudaStream_t stream) {
  constexpr int64_t per_block = kWarpsPerBlock * (32 / NB);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((args.nmat + per_block - 1) / per_block, INT_MAX));
  constexpr int threads = 32 * kWarpsPerBlock;
  switch (dtype) {
    case DType::kFloat32: rank_gram_warp_kernel<NB, float><<<blocks, threads, 0, stream>>>(args); break;
    case DType::kFloat16: rank_gram_warp_kernel<NB, F16><<<blocks, threads, 0, stream>>>(args); break;
    case DType::kBFloat16: rank_gram_warp_kernel<NB, BF16><<<blocks, threads, 0, stream>>>(args); break;
    case DType::kFloat64: throw std::logic_error("rank_cuda: float64 has no warp path");
  }
  check(cudaGetLastError(), "kernel launch");
}

int64_t count_matrices(const RankJob& job) {
  int64_t n = 1;
  for (int d = 0; d < job.batch_ndim; ++d) n *= job.batch_sizes[d];
  return n;
}

}  // namespace

int64_t rank_cuda_workspace_bytes(int64_t rows, int64_t cols, DType dtype, int64_t num_matrices, int device) {
  if (num_matrices <= 0 || rows < 1 || cols < 1 || warp_path(rows, cols, dtype)) return 0;
  return make_plan(rows, cols, dtype, num_matrices, device).ws_bytes;
}

void rank_cuda(const RankJob& job, int device, void* stream, void* workspace, int64_t workspace_bytes) {
  const int64_t nmat = count_matrices(job);
  if (nmat <= 0 || job.rows < 1 || job.cols < 1) return;
  if (job.batch_ndim < 0 || job.batch_ndim > 16) throw std::invalid_argument("rank_cuda: batch_ndim must be <= 16");
  check(cudaSetDevice(device), "cudaSetDevice");
  const bool small = warp_path(job.rows, job.cols, job.dtype);
  const Plan pl = small ? Plan{} : make_plan(job.rows, job.cols, job.dtype, nmat, device);
  if (pl.ws_bytes > workspace_bytes || (pl.ws_bytes > 0 && workspace == nullptr))
    throw std::invalid_argument("rank_cuda: workspace too small (need " + std::to_string(pl.ws_bytes) + " bytes)");
  Args args{};
  args.data = job.data;
  args.batch_ndim = job.batch_ndim;
  for (int d = 0; d < job.batch_ndim; ++d) {
    args.batch_sizes[d] = job.batch_sizes[d];
    args.batch_strides[d] = job.batch_strides[d];
  }
  args.nmat = nmat;
  const bool tall = job.rows >= job.cols;
  args.m = static_cast<int>(tall ? job.rows : job.cols);
  args.n = static_cast<int>(tall ? job.cols : job.rows);
  args.sr = tall ? job.row_stride : job.col_stride;
  args.sc = tall ? job.col_stride : job.row_stride;
  args.atol = job.atol;
  args.rtol = job.rtol;
  args.out = job.out;
  double* ws = static_cast<double*>(workspace);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (small) {
    if (args.n <= 8) launch_warp<8>(job.dtype, args, s);
    else if (args.n <= 16) launch_warp<16>(job.dtype, args, s);
    else launch_warp<32>(job.dtype, args, s);
    return;
  }
  switch (pl.threads) {
    case 32: launch_nt<32>(pl, job.dtype, args, ws, s); break;
    case 64: launch_nt<64>(pl, job.dtype, args, ws, s); break;
    case 128: launch_nt<128>(pl, job.dtype, args, ws, s); break;
    default: launch_nt<256>(pl, job.dtype, args, ws, s); break;
  }
}

}  // namespace pyprune
