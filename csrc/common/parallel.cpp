#include "common/parallel.h"

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#define PYPRUNE_HOST_OMP 1
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace pyprune {
namespace {

// Block b of [0, n) split into nblocks contiguous blocks.
void run_block_of(const RangeFn& fn, int64_t n, int nblocks, int b) {
  const int64_t begin = n * b / nblocks;
  const int64_t end = n * (b + 1) / nblocks;
  if (begin < end) fn(begin, end, b);
}

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // nblocks >= 2.
  void run(int64_t n, int nblocks, const RangeFn& fn) {
    std::lock_guard<std::mutex> call_lock(call_mu_);
    ensure_workers(nblocks - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      nblocks_ = nblocks;
      next_block_.store(1);  // block 0 is run by the caller
      pending_ = nblocks - 1;
      ++generation_;
    }
    cv_.notify_all();
    run_block(0);
    // The caller also steals blocks no worker has picked up yet.
    for (int b; (b = next_block_.fetch_add(1)) < nblocks_.load();) {
      run_block(b);
      finish_one();
    }
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void run_block(int b) { run_block_of(*fn_.load(), n_, nblocks_, b); }

  void finish_one() {
    std::lock_guard<std::mutex> lk(mu_);
    if (--pending_ == 0) done_cv_.notify_one();
  }

  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    {
      std::lock_guard<std::mutex> lk(mu_);
      seen = generation_;
    }
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      for (int b; (b = next_block_.fetch_add(1)) < nblocks_.load();) {
        run_block(b);
        finish_one();
      }
    }
  }

  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> workers_;
  std::atomic<const RangeFn*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int> nblocks_{0};
  std::atomic<int> next_block_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// The process's OpenMP runtime, when one is already loaded (torch loads its
// libgomp before pyprune's module is used).  Its worker threads are the ones
// torch's own kernels run on, and after each parallel region they keep
// spinning for a few milliseconds: a second pool of ours would then share the
// cores with them (on 2 cores a pyprune call right after a torch op ran its
// second block at about half speed).  Running our blocks on those workers
// instead lets them pick the work up at once.  GOMP_parallel is the entry
// point GCC emits for `#pragma omp parallel` (libgomp since GCC 4.9; LLVM's
// libomp and Intel's libiomp5 export it too); it is looked up, not linked, so
// the module loads and works without any OpenMP runtime.
//
// A child process forked after the runtime has run a parallel region cannot
// use it (libgomp's team threads do not exist there and the call would hang;
// torch's own kernels hang there too), so after a fork the child goes back to
// our pool, which runs every block on the calling thread when its workers are
// gone.
using GompParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);

struct HostOmp {
  GompParallelFn parallel = nullptr;
  const char* library = nullptr;
};

std::atomic<bool> forked_child{false};

#if defined(PYPRUNE_HOST_OMP)
// Registered when the module is loaded, before any fork that matters.
const int fork_handler = pthread_atfork(nullptr, nullptr, [] { forked_child.store(true); });
#endif

const HostOmp& host_omp() {
  static const HostOmp found = [] {
    HostOmp h;
#if defined(PYPRUNE_HOST_OMP)
    // PYPRUNE_THREAD_BACKEND=pool keeps the kernels on our pool (a way out,
    // and the baseline of the comparison in benchmarks/RESULTS.md).
    const char* want = std::getenv("PYPRUNE_THREAD_BACKEND");
    if (want != nullptr && std::strcmp(want, "pool") == 0) return h;
    for (const char* name : {"libgomp.so.1", "libomp.so", "libomp.so.5", "libiomp5.so"}) {
      void* lib = dlopen(name, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);  // only if already loaded
      if (lib == nullptr) continue;
      if (void* sym = dlsym(lib, "GOMP_parallel")) {
        h.parallel = reinterpret_cast<GompParallelFn>(sym);
        h.library = name;
        return h;  // the handle stays open: the library stays loaded while we use it
      }
      dlclose(lib);
    }
#endif
    return h;
  }();
  return found;
}

// The runtime parallel_for uses now (null: our pool).
GompParallelFn omp_parallel() {
  const HostOmp& omp = host_omp();
  return forked_child.load(std::memory_order_relaxed) ? nullptr : omp.parallel;
}

// One call's blocks, claimed one at a time by whichever team thread is free
// (a team smaller than asked for, e.g. inside another parallel region, still
// runs every block).
struct OmpCall {
  const RangeFn* fn;
  int64_t n;
  int nblocks;
  std::atomic<int> next{0};
};

void omp_team_body(void* arg) {
  OmpCall& c = *static_cast<OmpCall*>(arg);
  for (int b; (b = c.next.fetch_add(1, std::memory_order_relaxed)) < c.nblocks;) {
    run_block_of(*c.fn, c.n, c.nblocks, b);
  }
}

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: no join at interpreter exit
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int threads, int64_t grain,
                  const RangeFn& fn) {
  if (n <= 0) return;
  if (threads <= 1 || n <= grain) {
    fn(0, n, 0);
    return;
  }
  const int64_t max_blocks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int nblocks = static_cast<int>(std::min<int64_t>(threads, max_blocks));
  if (nblocks <= 1) {
    fn(0, n, 0);
    return;
  }
  if (const GompParallelFn parallel = omp_parallel()) {
    OmpCall call{&fn, n, nblocks};
    parallel(&omp_team_body, &call, static_cast<unsigned>(nblocks), 0);
    return;
  }
  pool().run(n, nblocks, fn);
}

const char* thread_backend() {
  return omp_parallel() != nullptr ? host_omp().library : "pyprune pool";
}

int hardware_threads() {
  const unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(h);
}

}  // namespace pyprune
