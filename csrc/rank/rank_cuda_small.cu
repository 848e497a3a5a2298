// Batched matrix rank on a CUDA device, small matrices: float32/16/bf16 with
// min(M, N) <= 32, one warp segment per matrix (see the comment below).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "rank/rank_cuda_common.cuh"

namespace pyprune {
namespace cuda_rank {
namespace {

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

// Multisection rounds: (NB + 1)^rounds >= 2^18 (the CPU's 9 quadrisections).
template <int NB>
constexpr int kRounds = NB == 8 ? 6 : (NB == 16 ? 5 : 4);
static_assert(9.0 * 9 * 9 * 9 * 9 * 9 >= 262144.0 && 17.0 * 17 * 17 * 17 * 17 >= 262144.0 &&
              33.0 * 33 * 33 * 33 >= 262144.0, "kRounds too small");

// Where value t (0 .. 7) of a lane goes in a stage: which matrix of the warp
// (the same for every lane: a segment's 8 * NB values are a multiple of 32),
// and its row and column there, with consecutive lanes on the unit-stride side.
struct StagePos {
  int seg, row, col;
};
template <int NB>
__device__ __forceinline__ StagePos stage_pos(int t, int lane, bool cols_fast) {
  constexpr int kPerSeg = kStageRows * NB;
  const int s = (t * 32) / kPerSeg;
  const int w = t * 32 + lane - s * kPerSeg;
  return cols_fast ? StagePos{s, w / NB, w % NB} : StagePos{s, w % kStageRows, w / kStageRows};
}

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

// Blocks per SM: 4 at NB = 32 (128 registers; 3 with more registers measured
// slower on an H200), 5 and 6 below (no spills).
template <int NB, class T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock, NB == 32 ? 4 : (NB == 16 ? 5 : 6))
    rank_gram_warp_kernel(Args a) {
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
    // The stage holds rows r0 .. r0+7 of each matrix of the warp (256 values,
    // 8 per lane): all 8 loads are issued before the first store.  (Issuing
    // the next stage's loads too needs 8 more registers; at NB = 32 that cost
    // a block per SM and measured 25% slower on an H200, and no faster below.)
    constexpr int kLoads = kStageRows * NB * MPW / 32;
    int64_t seg_off[MPW];
#pragma unroll
    for (int s = 0; s < MPW; ++s) seg_off[s] = __shfl_sync(kFull, my_off, s * NB);
    for (int r0 = 0; r0 < m; r0 += kStageRows) {
      T pre[kLoads];
#pragma unroll
      for (int t = 0; t < kLoads; ++t) {
        const StagePos q = stage_pos<NB>(t, lane, cols_fast);
        const int r = r0 + q.row;
        pre[t] = (r < m && q.col < n && b0 + q.seg < a.nmat)
                     ? static_cast<const T*>(a.data)[seg_off[q.seg] + r * a.sr + q.col * a.sc]
                     : T{};
      }
#pragma unroll
      for (int t = 0; t < kLoads; ++t) {
        const StagePos q = stage_pos<NB>(t, lane, cols_fast);
        xs[q.seg * SEG_X + q.row * NB + q.col] = to_double(pre[t]);
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
    // lambda_max lies in [lo, hi] and the count is monotone in the threshold:
    // when the counts at the thresholds of lo and hi agree, that is the count
    // at the threshold of lambda_max too, and the bisection is skipped (the
    // usual case: no eigenvalue within a factor 3 of the threshold).  Lanes 0
    // and 1 of the segment count at the two ends.
    const double thr_lo = dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * lo);
    const double thr_hi = dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * hi);
    const int c_end = count_le(dsm, esm, n, i == 0 ? thr_lo : thr_hi, pivmin);
    const int c_lo = __shfl_sync(kFull, c_end, 0, NB), c_hi = __shfl_sync(kFull, c_end, 1, NB);
    const bool settled = c_lo == c_hi;
    // Each round every lane counts at one of NB equispaced interior points; stop
    // once the bracket shrank by >= 2^18, as the CPU's 9 quadrisections do.
    // (The ballot needs every lane: the warp bisects if any segment must.)
    const int rounds = __all_sync(kFull, settled) ? 0 : kRounds<NB>;
    for (int round = 0; round < rounds; ++round) {
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
      if (bad) mark_non_finite(a, b);
      else a.out[b] = n - (settled ? c_lo : count_le(dsm, esm, n, thr, pivmin));
    }
    __syncwarp();
  }
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

}  // namespace

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

void launch_small(DType dtype, const Args& args, cudaStream_t s) {
  if (args.n <= 8) launch_warp<8>(dtype, args, s);
  else if (args.n <= 16) launch_warp<16>(dtype, args, s);
  else launch_warp<32>(dtype, args, s);
}

}  // namespace cuda_rank
}  // namespace pyprune
