// A persistent pool of worker threads. Ops hand it a task count and a function;
// the calling thread works too, so `n_threads` counts it. No thread is created per op.
// Between ops, workers spin briefly before sleeping: a decode step issues hundreds
// of small ops, and a futex wake per op would cost more than the op itself.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "core/function_ref.h"

namespace peregrine {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(task, thread) for task in [0, n_tasks); tasks are handed out dynamically.
  // Returns when every task has finished. Not reentrant.
  void parallel_for(int64_t n_tasks, FunctionRef<void(int64_t task, int thread)> fn);

  // Convenience: split [0, n) into contiguous ranges, about `grain` items each at least.
  void parallel_range(int64_t n, int64_t grain,
                      FunctionRef<void(int64_t begin, int64_t end, int thread)> fn);

  static int default_threads();

 private:
  void worker(int thread);
  void run_tasks(int thread);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // bumped once per parallel_for
  std::atomic<int> sleepers_{0};         // workers blocked on wake_
  std::atomic<int> busy_{0};             // workers still running the current op
  std::atomic<bool> stop_{false};
  const FunctionRef<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
};

}  // namespace peregrine
