// edgefleet's thread pool: see edgefleet_pool.h for what it is and why.
//
// One job at a time per pool (the calling thread's). Its tasks are claimed through `claim`, a
// 64-bit word holding the job's epoch (high half) and the next task (low half): a worker that
// wakes after its job has finished, or reads the next job's fields while they are being written,
// fails its compare-and-swap on the changed epoch and claims nothing (a seqlock: the caller
// closes the epoch before it rewrites the job's fields). Idle workers spin `spin` pause
// instructions, a waiting caller kCallerSpin, then they sleep on a futex.

#include "edgefleet_pool.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <tvm/ffi/error.h>
#include <tvm/ffi/optional.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace edgefleet {
namespace pool {
namespace {

// Measured (docs/performance.md, "A pool whose caller takes a late worker's share"); the
// environment overrides them (EDGEFLEET_POOL_TASKS, EDGEFLEET_POOL_SPIN). kSpin is the spin of
// `[runtime] spin = true`; the agent sets 0 for its default, false.
constexpr int kTasksPerThread = 4;
constexpr int kSpin = 1000;
// A caller waits only for tasks already running, so it spins before it sleeps whatever `spin`
// says: asleep, it waits for its own wake-up too, behind other work on its core.
constexpr int kCallerSpin = 2000;
// Inside a run (RunBegins), an idle worker's spin before it sleeps: ~2-5 ms of pause
// instructions, longer than the serial stretches between a model's parallel kernels.
constexpr int kRunSpin = 100000;

constexpr uint32_t kClosed = UINT32_MAX;  // a task index past every job: nothing to claim

int EnvInt(const char* name, int fallback, int least) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  int value = std::atoi(text);
  return value < least ? least : value;
}

inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>* word, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// Sleep until `word` differs from `value`. `sleeping` counts the threads asleep on it, so that
// whoever changes it calls into the kernel only when one is.
void SleepWhileEqual(std::atomic<uint32_t>* word, uint32_t value, std::atomic<int>* sleeping) {
  sleeping->fetch_add(1, std::memory_order_seq_cst);
  while (word->load(std::memory_order_seq_cst) == value) FutexWait(word, value);
  sleeping->fetch_sub(1, std::memory_order_relaxed);
}

// Spin up to `spin` pauses, then sleep, until `word` differs from `value`.
void WaitWhileEqual(std::atomic<uint32_t>* word, uint32_t value, int spin, std::atomic<int>* sleeping) {
  for (int i = 0; i < spin; ++i) {
    if (word->load(std::memory_order_acquire) != value) return;
    Pause();
  }
  SleepWhileEqual(word, value, sleeping);
}

void WakeAll(std::atomic<uint32_t>* word, std::atomic<int>* sleeping) {
  if (sleeping->load(std::memory_order_seq_cst) > 0) FutexWake(word, INT_MAX);
}

class Pool {
 public:
  explicit Pool(int threads)
      : threads_(threads),
        tasks_per_thread_(EnvInt("EDGEFLEET_POOL_TASKS", kTasksPerThread, 1)),
        spin_(EnvInt("EDGEFLEET_POOL_SPIN", kSpin, 0)) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
  }

  ~Pool() {
    stop_.store(true, std::memory_order_relaxed);
    posted_.fetch_add(1, std::memory_order_seq_cst);
    FutexWake(&posted_, INT_MAX);
    for (std::thread& worker : workers_) worker.join();
  }

  int threads() const { return threads_; }

  // The caller's: whether idle workers spin until the run ends.
  void SetInRun(bool in_run) { in_run_.store(in_run, std::memory_order_relaxed); }

  int Launch(FTVMParallelLambda lambda, void* cdata, int num_task) {
    const uint32_t tasks = num_task > 0 ? num_task : threads_ * tasks_per_thread_;
    const uint32_t epoch = ++epoch_;
    claim_.store(uint64_t{epoch} << 32 | kClosed, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    lambda_.store(lambda, std::memory_order_relaxed);
    cdata_.store(cdata, std::memory_order_relaxed);
    tasks_.store(tasks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_ = tvm::ffi::Optional<tvm::ffi::Error>();
    claim_.store(uint64_t{epoch} << 32, std::memory_order_release);
    posted_.store(epoch, std::memory_order_seq_cst);
    WakeAll(&posted_, &workers_sleeping_);
    caller_tasks_ += RunTasks(epoch);
    // Every task is taken by now: wait for those that workers are still running.
    for (uint32_t done; (done = done_.load(std::memory_order_acquire)) != tasks;) {
      WaitWhileEqual(&done_, done, kCallerSpin, &caller_sleeping_);
    }
    if (!error_.has_value()) return 0;
    tvm::ffi::details::SetSafeCallRaised(*error_);
    return -1;
  }

  bool TasksRun(int64_t* by_caller, int64_t* by_workers) const {
    *by_caller = caller_tasks_;
    *by_workers = worker_tasks_.load(std::memory_order_relaxed);
    return true;
  }

 private:
  void Work() {
    // posted_ as the pool started, not as this thread first reads it: a worker that starts after
    // the destructor's post (a pool of 2 made and dropped at once, on a busy core) would otherwise
    // wait for a post that never comes, and the destructor's join with it.
    uint32_t seen = 0;
    for (;;) {
      WaitForJob(seen);
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = posted_.load(std::memory_order_acquire);
      worker_tasks_.fetch_add(RunTasks(seen), std::memory_order_relaxed);
    }
  }

  // A worker's wait for the job after `seen`: `spin_` pauses, or up to kRunSpin while a run that
  // wants it is under way, then asleep.
  void WaitForJob(uint32_t seen) {
    for (int i = 0; i < spin_ || (i < kRunSpin && in_run_.load(std::memory_order_relaxed)); ++i) {
      if (posted_.load(std::memory_order_acquire) != seen) return;
      Pause();
    }
    SleepWhileEqual(&posted_, seen, &workers_sleeping_);
  }

  // Run tasks of job `epoch` until none is left to claim; how many this thread ran.
  int64_t RunTasks(uint32_t epoch) {
    int64_t ran = 0;
    for (;;) {
      uint64_t claim = claim_.load(std::memory_order_acquire);
      FTVMParallelLambda lambda = lambda_.load(std::memory_order_relaxed);
      void* cdata = cdata_.load(std::memory_order_relaxed);
      const uint32_t tasks = tasks_.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      do {
        if (claim >> 32 != epoch || static_cast<uint32_t>(claim) >= tasks) return ran;
      } while (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel,
                                             std::memory_order_acquire));
      TVMParallelGroupEnv env{nullptr, static_cast<int32_t>(tasks)};
      if (lambda(static_cast<int>(static_cast<uint32_t>(claim)), &env, cdata) != 0) KeepError();
      ++ran;
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == tasks) WakeAll(&done_, &caller_sleeping_);
    }
  }

  // The first failing task's error, raised again on the calling thread when the launch returns.
  void KeepError() {
    tvm::ffi::Error error = tvm::ffi::details::MoveFromSafeCallRaised();
    std::lock_guard<std::mutex> lock(error_mutex_);
    if (!error_.has_value()) error_ = error;
  }

  const int threads_;
  const int tasks_per_thread_;
  const int spin_;
  std::atomic<bool> in_run_{false};  // idle workers spin on: a run that wants it is under way
  uint32_t epoch_ = 0;  // the caller's alone
  std::atomic<uint64_t> claim_{0};
  std::atomic<FTVMParallelLambda> lambda_{nullptr};
  std::atomic<void*> cdata_{nullptr};
  std::atomic<uint32_t> tasks_{0};
  std::atomic<uint32_t> posted_{0};  // the latest job's epoch; workers sleep on it
  std::atomic<uint32_t> done_{0};    // tasks of the job finished; the caller sleeps on it
  std::atomic<int> workers_sleeping_{0};
  std::atomic<int> caller_sleeping_{0};
  std::atomic<bool> stop_{false};
  std::mutex error_mutex_;
  tvm::ffi::Optional<tvm::ffi::Error> error_;
  int64_t caller_tasks_ = 0;
  std::atomic<int64_t> worker_tasks_{0};
  std::vector<std::thread> workers_;
};

// The calling thread's pool (as TVM's, one per thread that runs models); none: serial kernels.
thread_local std::unique_ptr<Pool> current;

}  // namespace

int Launch(FTVMParallelLambda lambda, void* cdata, int num_task) {
  if (current == nullptr) {
    TVMParallelGroupEnv env{nullptr, 1};
    return lambda(0, &env, cdata);
  }
  return current->Launch(lambda, cdata, num_task);
}

int Barrier(int /*task_id*/, TVMParallelGroupEnv* /*penv*/) {
  TVMFFIErrorSetRaisedFromCStr(
      "RuntimeError",
      "this kernel needs TVM's parallel barrier, which edgefleet's pool has not: set [runtime] pool = \"tvm\"");
  return -1;
}

void SetThreads(int threads) {
  if (threads <= 1) {
    current.reset();
  } else if (current == nullptr || current->threads() != threads) {
    current.reset();  // its workers stop before the new pool's start
    current = std::make_unique<Pool>(threads);
  }
}

bool HasWorkers() { return current != nullptr; }

void RunBegins(bool spin) {
  if (current != nullptr) current->SetInRun(spin);
}

void RunEnds() {
  if (current != nullptr) current->SetInRun(false);
}

bool TasksRun(int64_t* by_caller, int64_t* by_workers) {
  return current != nullptr && current->TasksRun(by_caller, by_workers);
}

}  // namespace pool
}  // namespace edgefleet
