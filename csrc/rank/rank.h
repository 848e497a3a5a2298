// Batched matrix rank on the CPU.
//
// Contract (shared with the CUDA kernels): rank(A) = #{ sigma_i(A) > tol },
// tol = max(atol, rtol * sigma_max(A)), the rule of torch.linalg.matrix_rank.
// The result agrees exactly with a float64 SVD of the same values under the
// same tol for every matrix whose singular values all lie at least 1%
// (relative) away from tol.
//
// Algorithms (all arithmetic in float64, matrices processed in lock-step
// groups of kLanes so each SIMD lane carries one matrix):
//  * float32 / float16 / bfloat16 input: Gram matrix of the smaller side,
//    accumulated in float64 (products of such values are exact in float64),
//    Householder reduction to tridiagonal form, Sturm-sequence counts.
//    Rounding errors are ~1e-16 * sigma_max^2, far below tol^2 >=
//    (eps32 * sigma_max)^2 ~ 1.4e-14 * sigma_max^2.  On the CPU, matrices
//    are settled before the reduction where possible: all-zero ones (rank
//    0), and ones of full rank apart from exactly-zero columns by an LDL^T
//    (Cholesky) test of G - tau I, with tau >= 1.02 tol^2 plus the test's own
//    error bound, on the lines of G that are not zero: it proves every other
//    eigenvalue lies more than 1% above tol^2 (rank n minus the number of
//    zero columns; ReLU feature maps often have some).  The rest are
//    regrouped four at a time for the full path.
//  * float64 input: Householder bidiagonalisation (Golub-Kahan), then Sturm
//    counts on the 2n x 2n Golub-Kahan tridiagonal matrix, whose eigenvalues
//    are +-sigma_i: this stays in the linear domain, as a float64 tol needs.
// Every matrix is first scaled by a power of two (exact) so its largest entry
// is near 1; any scale a finite input can have is handled.
#pragma once
#include <cstdint>

namespace pyprune {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct RankJob {
  const void* data = nullptr;  // first element
  DType dtype = DType::kFloat32;
  int batch_ndim = 0;          // number of leading (batch) dimensions, <= 16
  int64_t batch_sizes[16] = {};
  int64_t batch_strides[16] = {};  // in elements
  int64_t rows = 0, cols = 0;      // M, N
  int64_t row_stride = 0, col_stride = 0;  // in elements
  double atol = 0.0;           // absolute tolerance (>= 0)
  double rtol = 0.0;           // relative tolerance (>= 0)
  int64_t* out = nullptr;      // contiguous, one entry per matrix; -1 marks a
                               // matrix that holds NaN or Inf
};

constexpr int kLanes = 4;

// Bytes of workspace rank_cpu needs for `threads` threads.
int64_t rank_cpu_workspace_bytes(int64_t rows, int64_t cols, DType dtype, int threads);

// Computes job.out.  `workspace` holds rank_cpu_workspace_bytes(...) bytes,
// 64-byte aligned.  Returns the name of the instruction set used.
const char* rank_cpu(const RankJob& job, int threads, void* workspace);

// Name of the kernel variant rank_cpu would use on this CPU ("avx2" or "generic").
const char* rank_cpu_isa();

// CUDA (rank_cuda.cu, built only when nvcc exists).  One thread block per
// matrix; the per-matrix storage lives in shared memory when it fits the
// device's opt-in limit, else in a global workspace of
// rank_cuda_workspace_bytes(...) bytes (0 when shared memory suffices) that the
// caller allocates on `device`.  rank_cuda launches on `stream` (a
// cudaStream_t) and returns without synchronising; `data` and `out` are device
// pointers.  `nonfinite_flag` (a device int, or nullptr) is zeroed on the
// stream and set to 1 when some matrix holds NaN/Inf, so a caller can check
// the whole batch with one 4-byte read.  Float32/16/bf16 matrices with
// min(M, N) <= 32 run a kernel with one warp segment per matrix instead.
// Throws std::runtime_error with the CUDA error string on failure.
int64_t rank_cuda_workspace_bytes(int64_t rows, int64_t cols, DType dtype, int64_t num_matrices, int device);
void rank_cuda(const RankJob& job, int device, void* stream, void* workspace, int64_t workspace_bytes,
               int* nonfinite_flag);

namespace detail {
// One kernel variant per instruction set; see rank_kernel.h.
int64_t workspace_doubles_generic(int64_t rows, int64_t cols, DType dtype);
void rank_range_generic(const RankJob& job, int64_t group_begin, int64_t group_end, double* ws);
int64_t workspace_doubles_avx2(int64_t rows, int64_t cols, DType dtype);
void rank_range_avx2(const RankJob& job, int64_t group_begin, int64_t group_end, double* ws);
}  // namespace detail

}  // namespace pyprune
