#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace pyprune {
namespace {

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

  void run(int64_t n, int threads, int64_t grain,
           const RangeFn& fn) {
    std::lock_guard<std::mutex> call_lock(call_mu_);
    const int64_t max_blocks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
    const int nblocks = static_cast<int>(std::min<int64_t>(threads, max_blocks));
    if (nblocks <= 1) {
      fn(0, n, 0);
      return;
    }
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
  void run_block(int b) {
    const int64_t begin = n_ * b / nblocks_;
    const int64_t end = n_ * (b + 1) / nblocks_;
    if (begin < end) (*fn_.load())(begin, end, b);
  }

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
  pool().run(n, threads, grain, fn);
}

int hardware_threads() {
  const unsigned h = std::thread::hardware_concurrency();
  return h == 0 ? 1 : static_cast<int>(h);
}

}  // namespace pyprune
