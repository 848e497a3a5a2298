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
