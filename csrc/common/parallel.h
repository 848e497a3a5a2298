// Parallel loops for the CPU kernels.
//
// parallel_for(n, threads, grain, fn) splits [0, n) into contiguous blocks and
// runs fn(begin, end, block) on up to `threads` threads (the calling thread
// included).  When the process has an OpenMP runtime loaded (torch's libgomp)
// the blocks run on its threads, the ones torch's kernels use, which are
// still spinning right after a torch op; otherwise (and in a child process
// forked from one that used it) on a small persistent pool of our own, whose
// calls are serialised: two Python threads calling into the core at once
// simply queue.  Either way a call costs a few microseconds, not thread
// creation.
#pragma once
#include <cstdint>
#include <functional>

namespace pyprune {

// Runs fn(begin, end, block) over [0, n) split in at most `threads`
// contiguous blocks of at least `grain` items; `block` < threads identifies the
// block (e.g. to pick a per-thread workspace slot).  fn must not throw.
// threads <= 1 runs inline as fn(0, n, 0).
using RangeFn = std::function<void(int64_t, int64_t, int)>;
void parallel_for(int64_t n, int threads, int64_t grain, const RangeFn& fn);

// Where parallel_for runs its blocks: the name of the process's OpenMP
// runtime when one is loaded (torch's libgomp: its spinning workers pick the
// blocks up), else "pyprune pool".
const char* thread_backend();

// Number of hardware threads (std::thread::hardware_concurrency, at least 1).
int hardware_threads();

}  // namespace pyprune
