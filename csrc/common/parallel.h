// A small persistent thread pool for the CPU kernels.
//
// The pool is sized per call: parallel_for(n, threads, fn) splits [0, n) into
// contiguous blocks and runs fn(begin, end) on up to `threads` threads (the
// calling thread included).  Worker threads are created lazily and reused, so
// a call costs a few microseconds of wake-up, not thread creation.  Calls are
// serialised: two Python threads calling into the core at once simply queue.
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

// Number of hardware threads (std::thread::hardware_concurrency, at least 1).
int hardware_threads();

}  // namespace pyprune
