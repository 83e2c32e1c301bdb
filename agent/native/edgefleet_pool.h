// edgefleet's thread pool for compiled models' parallel loops (docs/runtime.md, "Thread pool").
//
// A compiled model library calls its data symbol __TVMBackendParallelLaunch for every parallel
// kernel; the shim points it here. Each launch is split into more tasks than threads, handed out
// through one atomic counter: the calling thread starts on them at once, workers that wake take
// what is left, and the caller waits only for tasks already taken, never for a worker that has not
// started (TVM's pool gives task i to worker i and waits for each: a worker descheduled behind
// other work stalls every kernel).
#pragma once

#include <tvm/runtime/c_backend_api.h>

#include <cstdint>

namespace edgefleet {
namespace pool {

// The launch and barrier of TVM's C backend API, for the calling thread's pool.
int Launch(FTVMParallelLambda lambda, void* cdata, int num_task);
// TVM emits the barrier only for `pragma_parallel_barrier_when_finish`, which edgefleet's
// schedules never use; with tasks taken dynamically a barrier could wait for a task nobody runs,
// so it fails with a reason instead.
int Barrier(int task_id, TVMParallelGroupEnv* penv);

// Size the calling thread's pool: `threads` - 1 workers beside the caller (1: kernels run serially).
void SetThreads(int threads);

// Whether the calling thread has a pool of more than one thread.
bool HasWorkers();

// A model run on the calling thread begins / ends: with `spin`, idle workers of its pool keep
// spinning for the next kernel's tasks until it ends (up to ~2-5 ms at a time) instead of sleeping
// after EDGEFLEET_POOL_SPIN pauses (docs/performance.md, "Workers awake for a whole run").
void RunBegins(bool spin);
void RunEnds();

// Tasks run so far by the calling thread's pool: by the caller and by its workers. False when the
// calling thread has no pool of more than one thread.
bool TasksRun(int64_t* by_caller, int64_t* by_workers);

}  // namespace pool
}  // namespace edgefleet
