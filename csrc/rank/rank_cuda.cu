// Batched matrix rank on a CUDA device: the algorithms of rank_kernel.h (see
// rank.h for the contract), one thread block per matrix.  Float32/16/bf16
// matrices with min(M, N) <= 32 go to rank_cuda_small.cu instead.
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
#include <algorithm>

#include "rank/rank_cuda_common.cuh"

namespace pyprune {
namespace cuda_rank {
namespace {

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
      if (tid == 0) mark_non_finite(a, b);
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
    // Counts at the thresholds of lo and hi: equal means settled (see settled_count).
    const int settled = settled_count<NT>(d, e2, n, dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * lo),
                                          dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * hi), pivmin, masks);
    if (settled >= 0) {
      if (tid == 0) a.out[b] = n - settled;
    } else {
      const double lmax = largest_eigenvalue<NT>(d, e2, n, lo, hi, pivmin, masks);
      if (tid == 0) {
        const double thr = dmax((a.atol * a.atol) * s, (a.rtol * a.rtol) * lmax);
        a.out[b] = n - count_le(d, e2, n, thr, pivmin);
      }
    }
    __syncthreads();
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
      if (tid == 0) mark_non_finite(a, b);
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
    const int settled = settled_count<NT>(nullptr, off2, nn, dmax(a.atol * s, a.rtol * lo),
                                          dmax(a.atol * s, a.rtol * hi), pivmin, masks);
    if (settled >= 0) {
      if (tid == 0) a.out[b] = nn - settled;
    } else {
      const double smax = largest_eigenvalue<NT>(nullptr, off2, nn, lo, hi, pivmin, masks);
      if (tid == 0) {
        const double thr = dmax(a.atol * s, a.rtol * smax);
        a.out[b] = nn - count_le(nullptr, off2, nn, thr, pivmin);
      }
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

int64_t count_matrices(const RankJob& job) {
  int64_t n = 1;
  for (int d = 0; d < job.batch_ndim; ++d) n *= job.batch_sizes[d];
  return n;
}

}  // namespace
}  // namespace cuda_rank

using namespace cuda_rank;

int64_t rank_cuda_workspace_bytes(int64_t rows, int64_t cols, DType dtype, int64_t num_matrices, int device) {
  if (num_matrices <= 0 || rows < 1 || cols < 1 || warp_path(rows, cols, dtype)) return 0;
  return make_plan(rows, cols, dtype, num_matrices, device).ws_bytes;
}

void rank_cuda(const RankJob& job, int device, void* stream, void* workspace, int64_t workspace_bytes,
               int* nonfinite_flag) {
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
  args.flag = nonfinite_flag;
  double* ws = static_cast<double*>(workspace);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (nonfinite_flag != nullptr) check(cudaMemsetAsync(nonfinite_flag, 0, sizeof(int), s), "cudaMemsetAsync");
  if (small) {
    launch_small(job.dtype, args, s);
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