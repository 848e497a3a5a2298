// Channel compaction: copy the kept sub-grid of a dense tensor to the front of
// a destination buffer, in place or out of place.
//
// A job describes one tensor in memory order (outermost dimension first).
// Each dimension has a size, a source stride in bytes and optionally a sorted,
// unique list of kept indices (nullptr keeps every index).  Everything after the
// last dimension forms one contiguous `chunk_bytes` block that is copied whole.
// The destination is the dense layout of the kept grid in the same memory
// order, starting at `dst`; with dst == src the job runs in place (a forward
// pass in "waves" in which no destination overlaps a source not yet read).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace pyprune {

struct SelectDim {
  int64_t size = 0;          // extent of the dimension in the source
  int64_t stride = 0;        // source stride in bytes
  const int64_t* keep = nullptr;  // kept indices, sorted and unique (nullptr: all)
  int64_t keep_len = 0;      // number of kept indices (== size when keep is nullptr)
};

struct SelectJob {
  char* src = nullptr;
  char* dst = nullptr;       // == src for in-place compaction
  int64_t chunk_bytes = 0;   // contiguous bytes below the last dimension
  std::vector<SelectDim> dims;
};

// One tensor of a select_channels call, described by its metadata (read from
// torch on the Python side): the planning below turns it into a job without a
// Python object per dimension.
struct SelectTensor {
  struct Sel {
    bool on = false;                // dimension selected
    const int64_t* keep = nullptr;  // kept channels, sorted, unique, in range (checked by the caller)
    int64_t keep_len = 0;
    int64_t block = 1;              // indices per channel
  };
  char* data = nullptr;
  int64_t item = 0;                 // element size in bytes
  int64_t first_pair = 0;           // first pair naming the tensor (for error messages)
  std::vector<int64_t> sizes, strides;  // strides in elements
  std::vector<Sel> sels;            // one per dimension
  // Set by select_plan_tensor:
  bool dense = false;               // non-overlapping and dense
  std::vector<int> order;           // memory order, outermost first (valid when dense)
  int64_t numel = 0;
  int64_t kept_bytes = 0;           // bytes of the compacted tensor
  std::vector<int64_t> new_sizes, new_strides;  // the compacted tensor: dense, same memory order
};

// Derives order, density, the compacted sizes and dense strides from sizes,
// strides and sels.  With `force_order` a tensor that is not dense (possible
// only when it is empty) gets the identity order anyway.
void select_plan_tensor(SelectTensor& t, bool force_order = false);

// Job copying the kept grid of a dense tensor to dst (== t.data: in place).
SelectJob select_tensor_job(const SelectTensor& t, char* dst);

// Checks that keep[0..n) is sorted, unique and within [0, size).  Returns
// {0, 0} when it is; else {1, i} (keep[i] == keep[i + 1]), {2, i}
// (keep[i] > keep[i + 1]) or {3, i} (keep[i] out of range, i == 0 or n - 1).
std::pair<int, int64_t> select_check_keep(const int64_t* keep, int64_t n, int64_t size);

// The first pairs (first_pair of two tensors) whose bytes overlap, in order of
// start address, or {-1, -1}.  Empty tensors take no bytes.
std::pair<int64_t, int64_t> select_first_overlap(const std::vector<SelectTensor>& tensors);

// Bytes a job writes (kept elements times chunk).
int64_t select_job_bytes(const SelectJob& job);

// Runs every job on the CPU with up to `threads` threads.
void select_cpu(std::vector<SelectJob>& jobs, int threads);

// CUDA (select_cuda.cu, built only when nvcc exists): all jobs of a call in
// one launch driven by a device-side job table.  Sources and destinations must
// not overlap (in-place compaction goes through a scratch buffer).
//  1. select_cuda_table_words(jobs): int64 words of the table.
//  2. select_cuda_pack(jobs, host, device_table, words): fills the host buffer
//     (reading the kept indices from host memory); pointers inside it are
//     computed for a copy of it at device address `device_table`.  Returns the
//     number of blocks to launch.
//  3. the caller copies host -> device_table on its stream, then
//     select_cuda(device_table, blocks, device, stream) launches on `stream`
//     (a cudaStream_t) without synchronising.
int64_t select_cuda_table_words(const std::vector<SelectJob>& jobs);
int64_t select_cuda_pack(const std::vector<SelectJob>& jobs, int64_t* host, uintptr_t device_table, int64_t words);
void select_cuda(const int64_t* device_table, int64_t blocks, int device, void* stream);

}  // namespace pyprune
