// Lock-step batched rank kernels.  This header is compiled once per
// instruction set (rank_cpu_generic.cpp, rank_cpu_avx2.cpp); each includes it
// with PYPRUNE_KERNEL_NS set to a distinct namespace, so the two copies never
// collide at link time.  See rank.h for the algorithms and the contract.
//
// Layout: kLanes matrices travel together; every "scalar" below is a vector
// whose lane l belongs to matrix l of the group.  All lanes follow the same
// control flow (the matrices have the same shape); per-lane decisions (a
// Householder vector that is already zero, a Sturm pivot sign) are blends.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "rank/rank.h"

#ifndef PYPRUNE_KERNEL_NS
#error "define PYPRUNE_KERNEL_NS before including rank_kernel.h"
#endif

namespace pyprune {
namespace PYPRUNE_KERNEL_NS {

static_assert(kLanes == 4, "the vector type below holds 4 doubles");
// Lanes (i0, i1, i2, i3) of the concatenation a:b of two 4-float vectors.
#if defined(__clang__)
#define PYPRUNE_SHUFFLE4(a, b, i0, i1, i2, i3) __builtin_shufflevector(a, b, i0, i1, i2, i3)
#else
#define PYPRUNE_SHUFFLE4(a, b, i0, i1, i2, i3) \
  __builtin_shuffle(a, b, (int __attribute__((vector_size(16)))){i0, i1, i2, i3})
#endif
typedef double vd __attribute__((vector_size(32)));

inline vd splat(double x) { return vd{x, x, x, x}; }
inline vd vabs(vd x) { return x < splat(0.0) ? -x : x; }
inline vd vmax(vd a, vd b) { return a > b ? a : b; }
inline vd vsqrt(vd x) {
  vd r;
  for (int l = 0; l < kLanes; ++l) r[l] = std::sqrt(x[l]);
  return r;
}
// Power of two closest below 1/x for x > 0 (1 for x == 0): exact scaling.
inline double pow2_recip(double x) {
  if (!(x > 0.0) || !std::isfinite(x)) return 1.0;
  uint64_t u;
  std::memcpy(&u, &x, 8);
  const int biased = static_cast<int>(u >> 52);  // x > 0: no sign bit
  if (biased >= 1 && biased <= 2044) {
    // x = f * 2^(biased - 1022), f in [0.5, 1): the answer 2^(1022 - biased) is normal,
    // with biased exponent (1022 - biased) + 1023.
    const uint64_t r = static_cast<uint64_t>(2045 - biased) << 52;
    double out;
    std::memcpy(&out, &r, 8);
    return out;
  }
  int e;  // subnormal or huge x: the general route
  std::frexp(x, &e);  // x = f * 2^e, f in [0.5, 1)
  return std::ldexp(1.0, -e);
}

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline double to_double(float v) { return v; }
inline double to_double(double v) { return v; }
inline double to_double(BFloat16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline double to_double(Half v) {
  const uint32_t sign = (v.bits & 0x8000u) ? 1u : 0u;
  const uint32_t exp = (v.bits >> 10) & 0x1fu;
  const uint32_t mant = v.bits & 0x3ffu;
  double r;
  if (exp == 0) {
    r = std::ldexp(static_cast<double>(mant), -24);
  } else if (exp == 31) {
    r = mant ? NAN : INFINITY;
  } else {
    r = std::ldexp(static_cast<double>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -r : r;
}

// Logical m x n view (m >= n) of one matrix: element (r, c) at r*sr + c*sc.
struct View {
  int64_t m, n, sr, sc;
};

inline View logical_view(const RankJob& job) {
  if (job.rows >= job.cols) return {job.rows, job.cols, job.row_stride, job.col_stride};
  return {job.cols, job.rows, job.col_stride, job.row_stride};
}

inline int64_t round4(int64_t n) { return (n + 3) & ~int64_t(3); }

inline int64_t matrix_offset(const RankJob& job, int64_t b) {
  int64_t off = 0;
  for (int d = job.batch_ndim - 1; d >= 0; --d) {
    const int64_t s = job.batch_sizes[d];
    off += (b % s) * job.batch_strides[d];
    b /= s;
  }
  return off;
}

// Loads the group into X as doubles, X[r * ld + c] (row_major) or
// X[c * ld + r]; lanes >= nl are zero.  Finiteness is checked later, on the
// Gram diagonal or in the scaling pass, where it costs nothing extra.
template <class T>
void load_group(const RankJob& job, const View& v, const int64_t* offs, int nl,
                bool row_major, int64_t ld, vd* X) {
  const T* base = static_cast<const T*>(job.data);
  const int64_t total = row_major ? v.m * ld : v.n * ld;
  const int64_t rstep = row_major ? ld : 1, cstep = row_major ? 1 : ld;
  // Only padding (lanes past nl, columns past n) must be zero; the rest is overwritten.
  if (nl < kLanes) {
    std::memset(static_cast<void*>(X), 0, sizeof(vd) * total);
  } else if (row_major && ld > v.n) {
    for (int64_t r = 0; r < v.m; ++r)
      for (int64_t c = v.n; c < ld; ++c) X[r * ld + c] = splat(0.0);
  }
  int64_t c_vec = 0;  // columns [0, c_vec) loaded by the vector path below
  if (std::is_same<T, float>::value && row_major && nl == kLanes && v.sc == 1) {
    // Contiguous float rows: load 4 columns of each lane, widen, and transpose
    // so vector X[r*ld + c] holds column c of all four matrices.
    typedef float vf __attribute__((vector_size(16)));
    c_vec = v.n & ~int64_t(3);
    const float* p[kLanes];
    for (int l = 0; l < kLanes; ++l) p[l] = reinterpret_cast<const float*>(base + offs[l]);
    for (int64_t r = 0; r < v.m; ++r) {
      vd* xr = X + r * ld;
      for (int64_t c = 0; c < c_vec; c += 4) {
        vf f[kLanes];
        for (int l = 0; l < kLanes; ++l) std::memcpy(&f[l], p[l] + r * v.sr + c, sizeof(vf));
        // 4x4 transpose in float (two rounds of interleaves), then widen.
        const vf t0 = PYPRUNE_SHUFFLE4(f[0], f[1], 0, 4, 1, 5);  // a0 b0 a1 b1
        const vf t1 = PYPRUNE_SHUFFLE4(f[2], f[3], 0, 4, 1, 5);  // c0 d0 c1 d1
        const vf t2 = PYPRUNE_SHUFFLE4(f[0], f[1], 2, 6, 3, 7);  // a2 b2 a3 b3
        const vf t3 = PYPRUNE_SHUFFLE4(f[2], f[3], 2, 6, 3, 7);  // c2 d2 c3 d3
        xr[c + 0] = __builtin_convertvector(PYPRUNE_SHUFFLE4(t0, t1, 0, 1, 4, 5), vd);
        xr[c + 1] = __builtin_convertvector(PYPRUNE_SHUFFLE4(t0, t1, 2, 3, 6, 7), vd);
        xr[c + 2] = __builtin_convertvector(PYPRUNE_SHUFFLE4(t2, t3, 0, 1, 4, 5), vd);
        xr[c + 3] = __builtin_convertvector(PYPRUNE_SHUFFLE4(t2, t3, 2, 3, 6, 7), vd);
      }
    }
    if (c_vec == v.n) return;
  }
  for (int l = 0; l < nl; ++l) {
    const T* p = base + offs[l];
    double* x = reinterpret_cast<double*>(X) + l;
    for (int64_t r = 0; r < v.m; ++r) {
      const T* pr = p + r * v.sr;
      double* xr = x + kLanes * r * rstep;
      for (int64_t c = c_vec; c < v.n; ++c) xr[kLanes * c * cstep] = to_double(pr[c * v.sc]);
    }
  }
}

// ---------------------------------------------------------------------------
// Sturm counts on a symmetric tridiagonal matrix (d, e2 = squared off-diagonal).

// Per lane: number of eigenvalues <= x.  Pivots of magnitude below pivmin are
// replaced by -pivmin (LAPACK dlaebz convention), so a zero pivot counts.
inline vd count_le(const vd* d, const vd* e2, int64_t n, vd x, vd pivmin) {
  const vd one = splat(1.0), zero = splat(0.0);
  vd q = d[0] - x;
  q = vabs(q) < pivmin ? -pivmin : q;
  vd cnt = q <= zero ? one : zero;
  for (int64_t i = 1; i < n; ++i) {
    q = (d[i] - x) - e2[i - 1] / q;
    q = vabs(q) < pivmin ? -pivmin : q;
    cnt += q <= zero ? one : zero;
  }
  return cnt;
}

// Per lane, for three shifts at once: eigenvalues <= x1, x2, x3.  The three
// recurrences are independent, so their divisions overlap in the pipeline.
inline void count_le3(const vd* d, const vd* e2, int64_t n, vd x1, vd x2, vd x3, vd pivmin,
                      vd* c1, vd* c2, vd* c3) {
  const vd one = splat(1.0), zero = splat(0.0);
  vd q1 = d[0] - x1, q2 = d[0] - x2, q3 = d[0] - x3;
  q1 = vabs(q1) < pivmin ? -pivmin : q1;
  q2 = vabs(q2) < pivmin ? -pivmin : q2;
  q3 = vabs(q3) < pivmin ? -pivmin : q3;
  vd n1 = q1 <= zero ? one : zero, n2 = q2 <= zero ? one : zero, n3 = q3 <= zero ? one : zero;
  for (int64_t i = 1; i < n; ++i) {
    const vd di = d[i], ei = e2[i - 1];
    q1 = (di - x1) - ei / q1;
    q2 = (di - x2) - ei / q2;
    q3 = (di - x3) - ei / q3;
    q1 = vabs(q1) < pivmin ? -pivmin : q1;
    q2 = vabs(q2) < pivmin ? -pivmin : q2;
    q3 = vabs(q3) < pivmin ? -pivmin : q3;
    n1 += q1 <= zero ? one : zero;
    n2 += q2 <= zero ? one : zero;
    n3 += q3 <= zero ? one : zero;
  }
  *c1 = n1; *c2 = n2; *c3 = n3;
}

// Largest eigenvalue in [lo, hi] (per lane) by quadrisection: each step
// counts at three interior points and keeps the quarter holding lambda_max.
inline vd largest_eigenvalue(const vd* d, const vd* e2, int64_t n, vd lo, vd hi, vd pivmin, int iters) {
  const vd nn = splat(static_cast<double>(n)), zero = splat(0.0);
  for (int it = 0; it < iters; ++it) {
    const vd w = 0.25 * (hi - lo);
    const vd x1 = lo + w, x2 = lo + 2.0 * w, x3 = hi - w;
    vd c1, c2, c3;
    count_le3(d, e2, n, x1, x2, x3, pivmin, &c1, &c2, &c3);
    const auto a1 = nn - c1 > zero, a2 = nn - c2 > zero, a3 = nn - c3 > zero;  // eigenvalue above x_j
    const vd new_lo = a3 ? x3 : (a2 ? x2 : (a1 ? x1 : lo));
    const vd new_hi = a1 ? (a2 ? (a3 ? hi : x3) : x2) : x1;
    lo = new_lo;
    hi = new_hi;
  }
  return 0.5 * (lo + hi);
}

// The threshold is tol(lambda_max) for a lambda_max somewhere in [lo, hi], and
// the count is monotone in the threshold: where the counts at tol(lo) and
// tol(hi) agree (the usual case, no eigenvalue near the threshold) that is the
// count at the exact threshold as well.  Returns the counts at thr(lambda_max)
// per lane, bisecting for lambda_max only when some lane needs it.
template <class Thr>
inline vd count_at_threshold(const vd* d, const vd* e2, int64_t n, vd lo, vd hi, vd pivmin, int iters, Thr thr) {
  vd c_lo, c_hi, unused;
  count_le3(d, e2, n, thr(lo), thr(hi), thr(hi), pivmin, &c_lo, &c_hi, &unused);
  const vd diff = c_lo - c_hi;
  if (diff[0] == 0.0 && diff[1] == 0.0 && diff[2] == 0.0 && diff[3] == 0.0) return c_lo;
  return count_le(d, e2, n, thr(largest_eigenvalue(d, e2, n, lo, hi, pivmin, iters)), pivmin);
}

// 9 quadrisections of an interval [L, 3L] leave a relative width below 8e-6;
// the midpoint puts sigma_max, hence tol, within 2e-6 (relative) of the exact
// value: 5000 times inside the contract's 1% margin.
constexpr int kBisectIters = 9;

// Householder vector for x (length len, x[0] = alpha): returns tau and beta
// with (I - tau v v^T) x = beta e1, v[0] = 1, v[i] = x[i] * scal.  Lanes whose
// x[1:] is already zero get tau = 0 and beta = alpha.
struct House {
  vd tau, beta, scal;
};
inline House householder(const vd* x, int64_t len) {
  const vd zero = splat(0.0), one = splat(1.0);
  const vd alpha = x[0];
  vd sigma = zero;
  for (int64_t i = 1; i < len; ++i) sigma += x[i] * x[i];
  const vd live_norm = vsqrt(alpha * alpha + sigma);
  const vd beta_live = alpha >= zero ? -live_norm : live_norm;
  const auto live = sigma > zero;
  const vd beta = live ? beta_live : alpha;
  const vd safe_beta = live ? beta_live : one;
  const vd denom = live ? alpha - beta_live : one;
  return {live ? (beta_live - alpha) / safe_beta : zero, beta, one / denom};
}

// ---------------------------------------------------------------------------
// Gram path (float32 / float16 / bfloat16).

inline int64_t col_start(int64_t j, int64_t n) { return j * n - j * (j - 1) / 2; }

// G (packed lower, column-major) = X^T X for row-major X (m x ld), in B x 4
// register tiles: B columns b times 4 columns a per pass over the rows.  B = 2
// (8 accumulators) for small n; B = 3 (12 accumulators, fewer loads per
// multiply-add from the L2-resident X) from kTile3x4MinN on.  ld must be a
// multiple of 4 and of B.
template <int B>
inline void gram_tiled(const vd* X, int64_t m, int64_t n, int64_t ld, vd* G) {
  for (int64_t b0 = 0; b0 < n; b0 += B) {
    for (int64_t a0 = b0 & ~int64_t(3); a0 < n; a0 += 4) {
      vd c[B][4];
      for (int j = 0; j < B; ++j)
        for (int i = 0; i < 4; ++i) c[j][i] = splat(0.0);
      const vd* xr = X;
      for (int64_t r = 0; r < m; ++r, xr += ld) {
        vd xb[B];
        for (int j = 0; j < B; ++j) xb[j] = xr[b0 + j];
        for (int i = 0; i < 4; ++i) {
          const vd xa = xr[a0 + i];
          for (int j = 0; j < B; ++j) c[j][i] += xb[j] * xa;
        }
      }
      for (int j = 0; j < B; ++j) {
        const int64_t b = b0 + j;
        if (b >= n) continue;
        for (int i = 0; i < 4; ++i) {
          const int64_t a = a0 + i;
          if (a >= b && a < n) G[col_start(b, n) + (a - b)] = c[j][i];
        }
      }
    }
  }
}

constexpr int64_t kTile3x4MinN = 24;
inline int64_t gram_ld(int64_t n) { return n >= kTile3x4MinN ? (n + 11) / 12 * 12 : round4(n); }

// Householder vector of column k of G (rows k+1..n-1): writes v (v[0] = 1),
// returns tau, and records d[k], e[k].
inline vd column_reflector(const vd* G, int64_t n, int64_t k, vd* d, vd* e, vd* v) {
  const vd* colk = G + col_start(k, n);
  d[k] = colk[0];
  const vd* x = colk + 1;
  const int64_t len = n - k - 1;
  const House h = householder(x, len);
  e[k] = h.beta;
  v[0] = splat(1.0);
  for (int64_t i = 1; i < len; ++i) v[i] = x[i] * h.scal;
  return h.tau;
}

// p = tau * A v for the trailing block A = G[k+1:, k+1:] (packed lower).
inline void trailing_symv(const vd* G, int64_t n, int64_t k, const vd* v, vd tau, vd* p) {
  const int64_t len = n - k - 1;
  for (int64_t i = 0; i < len; ++i) p[i] = splat(0.0);
  for (int64_t jj = 0; jj < len; ++jj) {
    const vd* col = G + col_start(k + 1 + jj, n);
    const vd vj = v[jj];
    const int64_t rest = len - jj;
    vd* pp = p + jj;
    const vd* vv = v + jj;
    vd t0 = col[0] * vj, t1 = splat(0.0), t2 = t1, t3 = t1;
    int64_t s = 1;
    for (; s + 3 < rest; s += 4) {
      const vd a0 = col[s], a1 = col[s + 1], a2 = col[s + 2], a3 = col[s + 3];
      pp[s] += a0 * vj; pp[s + 1] += a1 * vj; pp[s + 2] += a2 * vj; pp[s + 3] += a3 * vj;
      t0 += a0 * vv[s]; t1 += a1 * vv[s + 1]; t2 += a2 * vv[s + 2]; t3 += a3 * vv[s + 3];
    }
    for (; s < rest; ++s) {
      const vd a = col[s];
      pp[s] += a * vj;
      t0 += a * vv[s];
    }
    p[jj] += (t0 + t1) + (t2 + t3);
  }
  for (int64_t i = 0; i < len; ++i) p[i] *= tau;
}

// Householder reduction of packed-lower G to tridiagonal (d, e); G is destroyed.
//
// Step k reflects column k and updates the trailing block with
// A -= v w^T + w v^T.  That update is fused with the matrix-vector product of
// step k+1: once column k+1 is updated its reflector v' is known, and every
// later column, freshly updated, immediately adds its part of A' v'.  Each
// step then makes one pass over the trailing block instead of two.
inline void tridiagonalize(vd* G, int64_t n, vd* d, vd* e, vd* v, vd* p, vd* v1, vd* p1) {
  vd tau = splat(0.0);
  if (n >= 3) {
    tau = column_reflector(G, n, 0, d, e, v);
    trailing_symv(G, n, 0, v, tau, p);
  }
  for (int64_t k = 0; k + 2 < n; ++k) {
    const int64_t len = n - k - 1;
    // p holds tau * A v; it becomes w = p - (tau/2)(p.v) v.
    vd pv = splat(0.0);
    for (int64_t i = 0; i < len; ++i) pv += p[i] * v[i];
    const vd K = 0.5 * tau * pv;
    for (int64_t i = 0; i < len; ++i) p[i] -= K * v[i];
    const vd* w = p;
    // Column k+1 (first of the trailing block) first.
    {
      vd* col = G + col_start(k + 1, n);
      const vd wj = w[0], vj = v[0];
      for (int64_t s = 0; s < len; ++s) col[s] -= v[s] * wj + w[s] * vj;
    }
    if (k + 3 < n) {
      // Reflector of step k+1 from the updated column k+1, then the fused pass.
      const vd tau1 = column_reflector(G, n, k + 1, d, e, v1);
      const int64_t len1 = len - 1;
      for (int64_t i = 0; i < len1; ++i) p1[i] = splat(0.0);
      int64_t jj = 1;
      // Two columns at a time: each row's v, w, v' and p' entries are loaded
      // once for both, and p' is written once per row instead of twice.
      for (; jj + 1 < len; jj += 2) {
        vd* c0 = G + col_start(k + 1 + jj, n);  // rows R.., R = k+1+jj
        vd* c1 = G + col_start(k + 2 + jj, n);  // rows R+1..
        const vd* vv = v + jj;
        const vd* ww = w + jj;
        const vd* u = v1 + (jj - 1);
        vd* q = p1 + (jj - 1);
        const vd wj0 = w[jj], vj0 = v[jj], uj0 = u[0];
        const vd wj1 = w[jj + 1], vj1 = v[jj + 1], uj1 = u[1];
        const int64_t rest = len - jj;  // rows of column jj (>= 2)
        const vd a00 = c0[0] - (vv[0] * wj0 + ww[0] * vj0);
        const vd a01 = c0[1] - (vv[1] * wj0 + ww[1] * vj0);
        const vd a11 = c1[0] - (vv[1] * wj1 + ww[1] * vj1);
        c0[0] = a00; c0[1] = a01; c1[0] = a11;
        q[1] += a01 * uj0;
        vd t0 = a00 * uj0 + a01 * u[1], t1 = a11 * uj1;
        vd t0b = splat(0.0), t1b = splat(0.0);
        int64_t i = 2;
        for (; i + 1 < rest; i += 2) {
          const vd x0 = vv[i], y0 = ww[i], x1 = vv[i + 1], y1 = ww[i + 1];
          const vd a0 = c0[i] - (x0 * wj0 + y0 * vj0);
          const vd b0 = c1[i - 1] - (x0 * wj1 + y0 * vj1);
          const vd a1 = c0[i + 1] - (x1 * wj0 + y1 * vj0);
          const vd b1 = c1[i] - (x1 * wj1 + y1 * vj1);
          c0[i] = a0; c1[i - 1] = b0; c0[i + 1] = a1; c1[i] = b1;
          q[i] += a0 * uj0 + b0 * uj1;
          q[i + 1] += a1 * uj0 + b1 * uj1;
          t0 += a0 * u[i]; t1 += b0 * u[i];
          t0b += a1 * u[i + 1]; t1b += b1 * u[i + 1];
        }
        for (; i < rest; ++i) {
          const vd x0 = vv[i], y0 = ww[i];
          const vd a0 = c0[i] - (x0 * wj0 + y0 * vj0);
          const vd b0 = c1[i - 1] - (x0 * wj1 + y0 * vj1);
          c0[i] = a0; c1[i - 1] = b0;
          q[i] += a0 * uj0 + b0 * uj1;
          t0 += a0 * u[i]; t1 += b0 * u[i];
        }
        q[0] += t0 + t0b;
        q[1] += t1 + t1b;
      }
      for (; jj < len; ++jj) {  // a last single column
        vd* col = G + col_start(k + 1 + jj, n);
        const vd wj = w[jj], vj = v[jj];
        const int64_t jj1 = jj - 1;
        const vd* vv = v + jj;
        const vd* ww = w + jj;
        const vd* u = v1 + jj1;
        vd* q = p1 + jj1;
        const vd uj = u[0];
        const int64_t rest = len - jj;
        vd t0 = splat(0.0);
        for (int64_t s2 = 0; s2 < rest; ++s2) {
          const vd as = col[s2] - (vv[s2] * wj + ww[s2] * vj);
          col[s2] = as;
          if (s2 > 0) q[s2] += as * uj;
          t0 += as * u[s2];
        }
        q[0] += t0;
      }
      for (int64_t i = 0; i < len1; ++i) p1[i] *= tau1;
      for (int64_t i = 0; i < len1; ++i) {
        v[i] = v1[i];
        p[i] = p1[i];
      }
      tau = tau1;
    } else {
      // Last reflection: plain update of the remaining 1x1 block.
      for (int64_t jj = 1; jj < len; ++jj) {
        vd* col = G + col_start(k + 1 + jj, n);
        const vd wj = w[jj], vj = v[jj];
        const int64_t rest = len - jj;
        for (int64_t s = 0; s < rest; ++s) col[s] -= v[jj + s] * wj + w[jj + s] * vj;
      }
    }
  }
  if (n >= 2) {
    d[n - 2] = G[col_start(n - 2, n)];
    e[n - 2] = G[col_start(n - 2, n) + 1];
  }
  d[n - 1] = G[col_start(n - 1, n)];
}

// Per lane, 1.0 where the packed matrix C (already holding G - tau I, see
// full_rank_lanes) is positive definite, else 0.0, by an LDL^T factorisation
// without pivoting (exactly Cholesky's pivots, no square roots), in place.
// Only lanes set in `candidate` (1.0) are tested; a lane whose pivot is not
// positive drops out (its pivot is replaced by 1 so the other lanes go on),
// and the factorisation stops once no lane is left.  It costs n^3/6
// multiply-adds against the tridiagonal reduction's 2n^3/3.  Cholesky is
// backward stable: success means G - tau I + E is positive definite with
// ||E|| <= c n^2 eps ||G||, so lambda_min(G) > tau - c n^2 eps ||G||, and the
// caller's tau includes that margin.
inline vd positive_definite(vd* C, int64_t n, vd candidate) {
  vd ok = candidate;
  // Keeps the lanes whose pivot x is positive (false for NaN); returns the
  // pivot to divide by (1 in lanes that dropped out).
  const auto pivot = [&ok](vd x) {
    ok = x > splat(0.0) ? ok : splat(0.0);
    return x > splat(0.0) ? x : splat(1.0);
  };
  const auto any = [](vd x) { return x[0] != 0.0 || x[1] != 0.0 || x[2] != 0.0 || x[3] != 0.0; };
  // Four pivots per pass (then two, then one): the panel's columns are
  // factored and update each other first, then every trailing column is
  // updated by all four at once (a quarter of the loads and stores of one at
  // a time, the bound of this loop).  Below n = 16 two at a time is faster
  // (paired A/B at 8x8: 1.04x the time with four).
  int64_t j = 0;
  for (; n >= 16 && j + 3 < n && any(ok); j += 4) {
    vd* c[4];
    vd r[4];
    for (int t = 0; t < 4; ++t) c[t] = C + col_start(j + t, n);  // rows j+t..n-1 of column j+t
    for (int t = 0; t < 4; ++t) {
      r[t] = splat(1.0) / pivot(c[t][0]);
      for (int u = t + 1; u < 4; ++u) {  // column j+u (rows j+u..) -= l_{j+u,j+t} * column j+t
        const vd f = c[t][u - t] * r[t];
        const vd* src = c[t] + (u - t);
        for (int64_t i = 0; i < n - j - u; ++i) c[u][i] -= f * src[i];
      }
    }
    for (int64_t k = j + 4; k < n; ++k) {
      const vd f0 = c[0][k - j] * r[0], f1 = c[1][k - j - 1] * r[1];
      const vd f2 = c[2][k - j - 2] * r[2], f3 = c[3][k - j - 3] * r[3];
      vd* ck = C + col_start(k, n);  // rows k..n-1 of column k
      const vd* s0 = c[0] + (k - j);
      const vd* s1 = c[1] + (k - j - 1);
      const vd* s2 = c[2] + (k - j - 2);
      const vd* s3 = c[3] + (k - j - 3);
      const int64_t len = n - k;
      for (int64_t i = 0; i < len; ++i) ck[i] -= (f0 * s0[i] + f1 * s1[i]) + (f2 * s2[i] + f3 * s3[i]);
    }
  }
  for (; j + 1 < n && any(ok); j += 2) {
    vd* c0 = C + col_start(j, n);      // rows j..n-1 of column j
    vd* c1 = C + col_start(j + 1, n);  // rows j+1..n-1 of column j+1
    const vd r0 = splat(1.0) / pivot(c0[0]);
    const vd f10 = c0[1] * r0;  // l_{j+1,j}
    for (int64_t i = 0; i < n - j - 1; ++i) c1[i] -= f10 * c0[i + 1];
    const vd r1 = splat(1.0) / pivot(c1[0]);
    for (int64_t k = j + 2; k < n; ++k) {
      const vd f0 = c0[k - j] * r0, f1 = c1[k - j - 1] * r1;
      vd* ck = C + col_start(k, n);  // rows k..n-1 of column k
      const vd* s0 = c0 + (k - j);
      const vd* s1 = c1 + (k - j - 1);
      const int64_t len = n - k;
      for (int64_t i = 0; i < len; ++i) ck[i] -= f0 * s0[i] + f1 * s1[i];
    }
  }
  if (j + 1 == n) pivot(C[col_start(j, n)]);
  return ok;
}

// Per-lane facts about packed G, which is not modified: the exact power-of-two
// scale that puts the largest diagonal entry in [0.5, 1) (returned); *check
// is NaN in lanes whose diagonal holds NaN or Inf (for float32/16 input every
// squared entry is finite in float64, so that is exactly when the matrix
// does), *zero is 1.0 in lanes whose matrix is all zeros (its diagonal sums
// squares).
inline vd gram_scale(const vd* G, int64_t n, vd* check, vd* zero) {
  vd maxdiag = splat(0.0), c = splat(0.0);
  for (int64_t j = 0; j < n; ++j) {
    const vd g = G[col_start(j, n)];
    maxdiag = vmax(maxdiag, g);
    c += g - g;  // NaN iff some diagonal entry is NaN or Inf
  }
  vd s;
  for (int l = 0; l < kLanes; ++l) s[l] = pow2_recip(maxdiag[l]);
  *check = c;
  *zero = maxdiag == splat(0.0) ? splat(1.0) : splat(0.0);
  return s;
}

inline void scale_packed(vd* G, int64_t n, vd s) {
  const int64_t packed = n * (n + 1) / 2;
  for (int64_t i = 0; i < packed; ++i) G[i] *= s;
}

// Full-rank test of the unscaled Gram G = X^T X, which it does not modify:
// returns 1.0 in `candidate` lanes where rank(X) = n - z for certain, z (in
// *zero_cols) being the number of X's columns that are exactly zero.
//
// A zero column of X is a zero diagonal entry of G (a sum of squares, exact
// in float64 for float32/16 input: no product underflows) with the whole of
// its row and column zero.  Such a line is left out: X's singular values are
// those of X without its zero columns, plus z exact zeros (never above tol).
// The rest has rank n - z when lambda_min > tol^2 for the matrix's
// lambda_max, which holds when G - tau I restricted to the other lines is
// positive definite for tau >= 1.02 tol^2(hi) + the factorisation's error
// margin, where hi >= lambda_max is the smaller of trace(G) and G's largest
// absolute row sum (both bound lambda_max of a positive semidefinite matrix).
// Then every nonzero singular value lies more than 1% above tol, where the
// contract asks for rank n - z.  The test needs no scaling: squares of
// float32/16 values and their sums stay far inside float64's range.  In the
// copy C the zero lines keep their exact zeros and get a unit diagonal, so
// the factorisation passes them with pivot 1 and leaves the others exactly
// as it would without them.  `rowsum` is n vectors of scratch, C a packed
// copy (one pass over G fills both).
inline vd full_rank_lanes(const vd* G, int64_t n, vd candidate, double atol, double rtol, vd* rowsum,
                          vd* C, vd* zero_cols) {
  vd trace = splat(0.0), zc = splat(0.0);
  for (int64_t i = 0; i < n; ++i) rowsum[i] = splat(0.0);
  for (int64_t j = 0; j < n; ++j) {
    const vd* cj = G + col_start(j, n);
    vd* dj = C + col_start(j, n);
    const vd g = cj[0];
    dj[0] = g;
    trace += g;
    zc += g == splat(0.0) ? splat(1.0) : splat(0.0);
    vd colsum = vabs(g);
    for (int64_t i = j + 1; i < n; ++i) {
      const vd a = cj[i - j];
      dj[i - j] = a;
      const vd aa = vabs(a);
      colsum += aa;
      rowsum[i] += aa;
    }
    rowsum[j] += colsum;
  }
  vd maxrow = splat(0.0);
  for (int64_t i = 0; i < n; ++i) maxrow = vmax(maxrow, rowsum[i]);
  const double nn = static_cast<double>(n);
  // Sums rounded to nearest are within a factor (1 + n eps) of the exact ones.
  const vd hi = (maxrow < trace ? maxrow : trace) * (1.0 + 4.0 * nn * DBL_EPSILON);
  const vd thr = vmax(splat(atol * atol), splat(rtol * rtol) * hi);
  const vd tau = 1.02 * thr + splat(8.0 * (nn * nn + nn) * DBL_EPSILON) * trace;
  for (int64_t j = 0; j < n; ++j) {
    vd& d = C[col_start(j, n)];
    d = d == splat(0.0) ? splat(1.0) : d - tau;
  }
  *zero_cols = zc;
  return positive_definite(C, n, candidate);
}

// Ranks of scaled G (destroyed) by the tridiagonal reduction and Sturm
// counts; lanes whose input held NaN/Inf (check) get -1.  `work` holds 6n
// vectors.
inline vd gram_ranks_full(vd* G, int64_t n, vd s, vd check, vd* work, double atol, double rtol) {
  vd* d = work;
  vd* e = d + n;
  vd* v = e + n;
  vd* p = v + n;
  vd* v1 = p + n;
  vd* p1 = v1 + n;
  tridiagonalize(G, n, d, e, v, p, v1, p1);
  vd* e2 = v;  // v is free now
  vd maxd = splat(0.0), hi = splat(0.0), maxe2 = splat(0.0);
  for (int64_t i = 0; i < n; ++i) {
    const vd left = i > 0 ? vabs(e[i - 1]) : splat(0.0);
    const vd right = i + 1 < n ? vabs(e[i]) : splat(0.0);
    maxd = vmax(maxd, d[i]);
    hi = vmax(hi, d[i] + left + right);
    if (i + 1 < n) {
      e2[i] = e[i] * e[i];
      maxe2 = vmax(maxe2, e2[i]);
    }
  }
  const vd pivmin = DBL_MIN * vmax(splat(1.0), maxe2);
  // G is positive semidefinite: |e_i| <= max d <= lambda_max, so hi <= 3 lambda_max.
  const vd lo = vmax(maxd, hi * (1.0 / 3.0));
  // sigma > tol  <=>  lambda > tol^2 (in the scaled units of G).
  const auto thr = [&](vd lmax) { return vmax(splat(atol * atol) * s, splat(rtol * rtol) * lmax); };
  const vd rank = splat(static_cast<double>(n)) - count_at_threshold(d, e2, n, lo, hi, pivmin, kBisectIters, thr);
  return check == splat(0.0) ? rank : splat(-1.0);
}

// The Gram path of one thread's range of groups.  Each group's matrices are
// settled early where possible (all-zero matrices: rank 0; the full-rank
// test above: rank n minus the zero columns); the others take the full path,
// but not in their own group: they wait in a pending group of four collected
// across groups (each lane's arithmetic is independent of the other lanes, so
// the result does not depend on the company), and a group where nothing was
// settled runs the full path in place.  The full-rank test is skipped once it has failed
// in 32 more matrices than it settled (rank-deficient maps).
struct GramRange {
  const RankJob& job;
  int64_t n;
  vd* work;      // 6n vectors
  vd* C;         // packed scratch for the full-rank test
  vd* P;         // packed pending group
  vd ps = splat(1.0), pcheck = splat(0.0);
  int64_t pout[kLanes] = {};
  int pending = 0;
  int64_t tested_ok = 0, tested_failed = 0;

  void flush() {
    if (pending == 0) return;
    const int64_t packed = n * (n + 1) / 2;
    for (int l = pending; l < kLanes; ++l) {  // idle lanes: zero matrices, result unused
      for (int64_t i = 0; i < packed; ++i) P[i][l] = 0.0;
      ps[l] = 1.0;
      pcheck[l] = 0.0;
    }
    const vd r = gram_ranks_full(P, n, ps, pcheck, work, job.atol, job.rtol);
    for (int l = 0; l < pending; ++l) job.out[pout[l]] = static_cast<int64_t>(r[l]);
    pending = 0;
  }

  // G: the group's packed Gram matrices, nl lanes used, outputs from b0.
  void group(vd* G, int nl, int64_t b0) {
    vd check, zero;
    const vd s = gram_scale(G, n, &check, &zero);  // applied only on the full path
    vd done = splat(0.0), rank = splat(0.0);
    vd candidate;
    for (int l = 0; l < kLanes; ++l) {
      const bool used = l < nl;
      if (used && zero[l] != 0.0 && check[l] == 0.0) done[l] = 1.0;  // rank 0
      candidate[l] = used && done[l] == 0.0 && check[l] == 0.0 ? 1.0 : 0.0;
    }
    const bool any_candidate = candidate[0] + candidate[1] + candidate[2] + candidate[3] > 0.0;
    if (any_candidate && tested_failed <= tested_ok + 32) {
      vd zero_cols;
      const vd full = full_rank_lanes(G, n, candidate, job.atol, job.rtol, work, C, &zero_cols);
      for (int l = 0; l < kLanes; ++l) {
        if (candidate[l] == 0.0) continue;
        if (full[l] != 0.0) {
          done[l] = 1.0;
          rank[l] = static_cast<double>(n) - zero_cols[l];
          ++tested_ok;
        } else {
          ++tested_failed;
        }
      }
    }
    int settled = 0;
    for (int l = 0; l < nl; ++l) settled += done[l] != 0.0;
    if (settled == 0) {  // nothing to take out: the full path on the group itself
      scale_packed(G, n, s);
      const vd r = gram_ranks_full(G, n, s, check, work, job.atol, job.rtol);
      for (int l = 0; l < nl; ++l) job.out[b0 + l] = static_cast<int64_t>(r[l]);
      return;
    }
    const int64_t packed = n * (n + 1) / 2;
    for (int l = 0; l < nl; ++l) {
      if (done[l] != 0.0) {
        job.out[b0 + l] = static_cast<int64_t>(rank[l]);
        continue;
      }
      const int q = pending++;
      const double sl = s[l];
      for (int64_t i = 0; i < packed; ++i) P[i][q] = G[i][l] * sl;
      ps[q] = s[l];
      pcheck[q] = check[l];
      pout[q] = b0 + l;
      if (pending == kLanes) flush();
    }
  }
};

// ---------------------------------------------------------------------------
// Bidiagonal path (float64): X column-major, X[c * m + r].

inline vd bidiag_ranks(vd* X, int64_t m, int64_t n, vd* work, double atol, double rtol) {
  vd* d = work;            // n
  vd* e = d + n;           // n
  vd* u = e + n;           // n
  vd* y = u + n;           // m
  vd* off2 = y + m;        // 2n (squared Golub-Kahan off-diagonals)
  vd* zeros = off2 + 2 * n;  // 2n
  // Exact scaling so the largest magnitude is in [0.5, 1).
  vd maxabs = splat(0.0), check = splat(0.0);
  for (int64_t i = 0; i < m * n; ++i) {
    maxabs = vmax(maxabs, vabs(X[i]));
    check += X[i] - X[i];  // NaN iff some entry is NaN or Inf
  }
  vd s;
  for (int l = 0; l < kLanes; ++l) s[l] = pow2_recip(maxabs[l]);
  for (int64_t i = 0; i < m * n; ++i) X[i] *= s;

  for (int64_t k = 0; k < n; ++k) {
    // Left reflector: zero X[k+1:, k].
    vd* col = X + k * m + k;
    const int64_t len = m - k;
    const House h = householder(col, len);
    d[k] = h.beta;
    for (int64_t i = 1; i < len; ++i) col[i] *= h.scal;  // col holds v (v[0] = 1 implied)
    for (int64_t j = k + 1; j < n; ++j) {
      vd* cj = X + j * m + k;
      vd t = cj[0];
      for (int64_t i = 1; i < len; ++i) t += col[i] * cj[i];
      t *= h.tau;
      cj[0] -= t;
      for (int64_t i = 1; i < len; ++i) cj[i] -= t * col[i];
    }
    if (k + 1 >= n) break;
    // Right reflector: zero X[k, k+2:].
    const int64_t len2 = n - k - 1;
    for (int64_t t = 0; t < len2; ++t) u[t] = X[(k + 1 + t) * m + k];
    const House g = householder(u, len2);
    e[k] = g.beta;
    u[0] = splat(1.0);
    for (int64_t t = 1; t < len2; ++t) u[t] *= g.scal;
    const int64_t rows = m - k - 1;
    for (int64_t i = 0; i < rows; ++i) y[i] = splat(0.0);
    for (int64_t t = 0; t < len2; ++t) {
      const vd* ct = X + (k + 1 + t) * m + (k + 1);
      const vd ut = u[t];
      for (int64_t i = 0; i < rows; ++i) y[i] += ct[i] * ut;
    }
    for (int64_t t = 0; t < len2; ++t) {
      vd* ct = X + (k + 1 + t) * m + (k + 1);
      const vd f = g.tau * u[t];
      for (int64_t i = 0; i < rows; ++i) ct[i] -= f * y[i];
    }
  }
  // Golub-Kahan tridiagonal: zero diagonal, off-diagonal d0, e0, d1, e1, ..., d_{n-1}.
  const int64_t nn = 2 * n;
  vd maxo = splat(0.0), maxo2 = splat(0.0);
  for (int64_t i = 0; i < nn - 1; ++i) {
    const vd o = (i % 2 == 0) ? d[i / 2] : e[i / 2];
    off2[i] = o * o;
    maxo = vmax(maxo, vabs(o));
    maxo2 = vmax(maxo2, off2[i]);
  }
  for (int64_t i = 0; i < nn; ++i) zeros[i] = splat(0.0);
  vd hi = splat(0.0);
  for (int64_t i = 0; i < nn; ++i) {
    const vd left = i > 0 ? vsqrt(off2[i - 1]) : splat(0.0);
    const vd right = i + 1 < nn ? vsqrt(off2[i]) : splat(0.0);
    hi = vmax(hi, left + right);
  }
  const vd pivmin = DBL_MIN * vmax(splat(1.0), maxo2);
  // Every entry of the bidiagonal is <= sigma_max and hi <= 2 max|o|.
  const vd lo = vmax(maxo, 0.5 * hi);
  const auto thr = [&](vd smax) { return vmax(splat(atol) * s, splat(rtol) * smax); };
  const vd rank =
      splat(static_cast<double>(nn)) - count_at_threshold(zeros, off2, nn, lo, hi, pivmin, kBisectIters, thr);
  return check == splat(0.0) ? rank : splat(-1.0);
}

// ---------------------------------------------------------------------------

inline int64_t workspace_doubles(int64_t rows, int64_t cols, DType dtype) {
  const int64_t m = std::max(rows, cols), n = std::min(rows, cols);
  int64_t vecs;
  if (dtype == DType::kFloat64) {
    vecs = m * n + 3 * n + m + 4 * n + 8;
  } else {
    vecs = m * gram_ld(n) + 3 * (n * (n + 1) / 2) + 6 * n + 8;  // X, G, its copy, pending, vectors
  }
  return vecs * kLanes + 8;  // + slack for alignment
}

template <class T>
void rank_range_typed(const RankJob& job, int64_t g0, int64_t g1, double* ws_raw) {
  const View v = logical_view(job);
  const int64_t m = v.m, n = v.n;
  int64_t nmat = 1;
  for (int d = 0; d < job.batch_ndim; ++d) nmat *= job.batch_sizes[d];
  vd* ws = reinterpret_cast<vd*>((reinterpret_cast<uintptr_t>(ws_raw) + 31) & ~uintptr_t(31));
  const bool f64 = job.dtype == DType::kFloat64;
  const int64_t ld = f64 ? m : gram_ld(n);
  vd* X = ws;
  vd* G = X + (f64 ? m * n : m * ld);
  vd* work = f64 ? G : G + n * (n + 1) / 2;
  GramRange gram{job, n, work, work + 6 * n, work + 6 * n + n * (n + 1) / 2};
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t b0 = g * kLanes;
    const int nl = static_cast<int>(std::min<int64_t>(kLanes, nmat - b0));
    int64_t offs[kLanes];
    for (int l = 0; l < nl; ++l) offs[l] = matrix_offset(job, b0 + l);
    if (f64) {
      load_group<T>(job, v, offs, nl, /*row_major=*/false, m, X);
      const vd ranks = bidiag_ranks(X, m, n, work, job.atol, job.rtol);
      for (int l = 0; l < nl; ++l) job.out[b0 + l] = static_cast<int64_t>(ranks[l]);
    } else {
      load_group<T>(job, v, offs, nl, /*row_major=*/true, ld, X);
      if (n >= kTile3x4MinN) gram_tiled<3>(X, m, n, ld, G); else gram_tiled<2>(X, m, n, ld, G);
      gram.group(G, nl, b0);
    }
  }
  if (!f64) gram.flush();
}

inline void rank_range(const RankJob& job, int64_t g0, int64_t g1, double* ws) {
  switch (job.dtype) {
    case DType::kFloat32: rank_range_typed<float>(job, g0, g1, ws); break;
    case DType::kFloat64: rank_range_typed<double>(job, g0, g1, ws); break;
    case DType::kFloat16: rank_range_typed<Half>(job, g0, g1, ws); break;
    case DType::kBFloat16: rank_range_typed<BFloat16>(job, g0, g1, ws); break;
  }
}

}  // namespace PYPRUNE_KERNEL_NS
}  // namespace pyprune
