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

}  // namespace pyprune
