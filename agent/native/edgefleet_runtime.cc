// edgefleet's camera runtime: a plain C ABI over TVM's Relax virtual machine.
//
// The agent calls these functions through ctypes, so a camera needs libtvm_runtime,
// libtvm_ffi and this file compiled, and no Python extension: the same three libraries serve
// every Python version and architectures (armv7) that have no TVM wheel.
//
// Contract (EF_ABI_VERSION; bump it when a signature or meaning changes):
//   ef_model_load(path, device_type, device_id)   -> handle, or NULL (ef_last_error says why)
//   ef_model_run(handle, n, data, nbytes, ndim, shapes, dtypes, n_out, out_data, out_nbytes, &copied)
//                                                 -> number of outputs, or -1; copied = 1 when the
//                                                    outputs were copied to out_data (RunOutputsCopied)
//   ef_model_output(handle, i, &ndim, shape[8], dtype[32], &nbytes) -> 0, or -1
//   ef_model_output_copy(handle, i, dst, nbytes)  -> 0, or -1
//   ef_model_free(handle)
//   ef_model_plan(handle, enable)                 -> 1 when runs follow the library's static plan, 0
//                                                    when they run on the VM (enable = 0, or no plan)
//   ef_set_threads(n)                             -> 0, or -1
//   ef_pool_tasks(&by_caller, &by_workers)        -> 0, or -1 (no edgefleet pool on this thread)
// Parallel kernels run on edgefleet's pool (edgefleet_pool.h), or on TVM's when the environment
// has EDGEFLEET_POOL=tvm when the library loads (agent config [runtime] pool).
// Errors never cross the ABI as C++ exceptions: every entry point catches and records them.
//
// A library with a static run plan (compiler/static_plan.py: every shape static) runs without the
// VM: its storages and tensors are made once at load, and a run copies the inputs in and calls the
// kernels; inputs the plan does not fit go to the VM's `main`, whose checks say what is wrong.
//
// It also registers the VM helpers TVM implements in its Python package (relax.run.nonzero,
// relax.run.shape_to_tensor): models call them by name, and a camera has no TVM Python.
//
// Memory: a compiled library embeds its VM executable, weights included, in the symbol
// __tvm_ffi__library_bin. Loading copies it once (TVM's library loader; the build edits tvm-ffi so
// that it moves its copy into the ffi::Bytes instead of copying it again: FFI_EDITS in
// cross/runtime_build.py) and then into the VM's tensors. The mapped file's pages are read once:
// they are dropped as soon as TVM has copied them, so the weights are in memory twice at the peak
// (the loader's copy and the tensors being filled) and once after it; the loader's freed copy is
// handed back to the system (docs/runtime.md). glibc malloc specifics (mallopt, malloc_trim) are
// deliberate: the bundles are built for glibc only.

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/tensor.h>

#include "edgefleet_pool.h"

#include <dlfcn.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#define EF_ABI_VERSION 3
#define EF_MAX_NDIM 8
#define EF_API extern "C" __attribute__((visibility("default")))

namespace {

thread_local std::string last_error;

// The VM's pooled allocator reuses buffers between calls, like TVM's Python VirtualMachine.
constexpr int kPooledAllocator = 2;

using FTVMParallelLaunch = int (*)(FTVMParallelLambda, void*, int);
using FTVMParallelBarrier = int (*)(int, TVMParallelGroupEnv*);

// A static model's run, made once at load from the library's `edgefleet_plan`
// (compiler/static_plan.py, PLAN_VERSION): the VM repeats its allocations, Tensor objects and
// register clears every run (int8 MobileNetV2-0.35 on x86: 0.122 ms per run on the VM, 0.114 on the
// plan; docs/performance.md, "A static run plan").
struct Plan {
  std::vector<tvm::runtime::Tensor> inputs;  // written by every run
  std::vector<std::string> input_dtypes;     // as the caller names them
  std::vector<tvm::runtime::Tensor> values;  // every tensor a call takes, kept alive for `args`
  std::vector<tvm::runtime::Tensor> outputs;
  std::vector<tvm::ffi::Function> kernels;
  std::vector<std::vector<tvm::ffi::AnyView>> args;  // per call, views of `values`
};

// Whether a model's runs keep their pool's idle workers spinning until the run ends
// (edgefleet_pool.h RunBegins), chosen by the runs' own times. On free cores it saves a futex
// wake-up per parallel kernel; where other work shares the cores a worker spinning through the run
// holds the core the caller needs and runs took 1.9-2.4x as long (docs/performance.md, "Workers
// awake for a whole run"). So a model with workers runs both ways by turns at first, then keeps the
// faster and tries the other every kFirstGap runs, twice as rarely each time it loses again (up to
// kLastGap), and switches when it wins. EDGEFLEET_POOL_RUN_SPIN=0 / 1: never / always spin.
class SpinChoice {
 public:
  SpinChoice() {
    const char* fixed = std::getenv("EDGEFLEET_POOL_RUN_SPIN");
    mode_ = fixed == nullptr || *fixed == '\0' ? kChosen : (std::strcmp(fixed, "0") == 0 ? kNever : kAlways);
  }

  // Whether this run spins.
  bool Next() {
    if (mode_ != kChosen) return mode_ == kAlways;
    ++runs_;
    if (runs_ <= 2 * kFirstRuns) return runs_ % 2 == 0;
    trying_ = runs_ >= next_try_;
    return trying_ != spin_;
  }

  // This run, which did (not) spin, took `took`.
  void Took(bool spun, std::chrono::nanoseconds took) {
    if (mode_ != kChosen) return;
    const double ns = static_cast<double>(took.count());
    if (runs_ <= 2 * kFirstRuns) {
      average_[spun] = average_[spun] == 0 ? ns : 0.75 * average_[spun] + 0.25 * ns;
      spin_ = average_[1] < average_[0];
      next_try_ = runs_ + kFirstGap;
    } else if (trying_) {  // one run the other way against the kept way's average
      const bool wins = ns < average_[spin_];
      gap_ = wins ? kFirstGap : std::min(gap_ * 2, kLastGap);
      if (wins) {
        average_[spun] = ns;
        spin_ = spun;
      }
      next_try_ = runs_ + gap_;
    } else {
      average_[spun] = 0.75 * average_[spun] + 0.25 * ns;
    }
  }

 private:
  enum Mode { kChosen, kNever, kAlways };
  static constexpr int64_t kFirstRuns = 4;  // each way, by turns
  static constexpr int64_t kFirstGap = 8;
  static constexpr int64_t kLastGap = 512;
  Mode mode_;
  bool spin_ = false;    // the faster way so far
  bool trying_ = false;  // this run goes the other way
  int64_t runs_ = 0;
  int64_t next_try_ = 0;
  int64_t gap_ = kFirstGap;
  double average_[2] = {0, 0};  // ns per run without / with the spin
};

struct Model {
  tvm::ffi::Module vm;
  tvm::ffi::Function main;
  DLDevice device;
  std::unique_ptr<Plan> plan;  // null: every run on the VM
  bool use_plan = true;
  SpinChoice spin;
  std::vector<tvm::runtime::Tensor> inputs;  // kept between runs on the CPU (InputTensor)
  std::vector<tvm::runtime::Tensor> outputs;
};

constexpr const char* kPlanFunction = "edgefleet_plan";
constexpr int64_t kPlanVersion = 1;

namespace json = tvm::ffi::json;

tvm::ffi::Shape PlanShape(const json::Object& entry) {
  std::vector<int64_t> dims;
  for (const tvm::ffi::Any& d : entry.at("shape").cast<json::Array>()) dims.push_back(d.cast<int64_t>());
  return tvm::ffi::Shape(dims);
}

DLDataType PlanDtype(const json::Object& entry) {
  return tvm::ffi::StringToDLDataType(entry.at("dtype").cast<tvm::ffi::String>());
}

// One numbered value of the plan: an input, a view of a storage or of an earlier value, a constant.
tvm::runtime::Tensor PlanValue(const json::Object& entry, const Plan& plan, const std::vector<tvm::runtime::Tensor>& storages,
                               const tvm::ffi::Array<tvm::ffi::Any>& constants) {
  auto number = [&](const char* key) { return static_cast<size_t>(entry.at(key).cast<int64_t>()); };
  if (entry.count("input")) return plan.inputs.at(number("input"));
  if (entry.count("storage")) return storages.at(number("storage")).CreateView(PlanShape(entry), PlanDtype(entry));
  if (entry.count("view")) return plan.values.at(number("view")).CreateView(PlanShape(entry), PlanDtype(entry));
  if (entry.count("constant")) return constants[number("constant")].cast<tvm::runtime::Tensor>();
  throw std::runtime_error("the library's run plan has a value of no known kind");
}

// The library's plan, or null when it has none (or one of another version: its VM still runs it).
std::unique_ptr<Plan> LoadPlan(const tvm::ffi::Module& library, const tvm::ffi::Module& vm, DLDevice device) {
  if (device.device_type != kDLCPU) return nullptr;
  auto function = vm->GetFunction(kPlanFunction, true);
  if (!function.has_value()) return nullptr;
  auto made = (*function)().cast<tvm::ffi::Array<tvm::ffi::Any>>();
  auto text = made[0].cast<tvm::ffi::String>();
  auto constants = made[1].cast<tvm::ffi::Array<tvm::ffi::Any>>();
  tvm::ffi::String error;
  json::Value parsed = json::Parse(text, &error);
  if (!error.empty()) throw std::runtime_error("the library's run plan is not JSON: " + std::string(error));
  auto spec = parsed.cast<json::Object>();
  if (spec.at("version").cast<int64_t>() != kPlanVersion) return nullptr;
  auto plan = std::make_unique<Plan>();
  for (const tvm::ffi::Any& input : spec.at("inputs").cast<json::Array>()) {
    auto entry = input.cast<json::Object>();
    plan->inputs.push_back(tvm::runtime::Tensor::Empty(PlanShape(entry), PlanDtype(entry), device));
    plan->input_dtypes.push_back(entry.at("dtype").cast<tvm::ffi::String>());
  }
  std::vector<tvm::runtime::Tensor> storages;
  for (const tvm::ffi::Any& size : spec.at("storages").cast<json::Array>()) {
    storages.push_back(tvm::runtime::Tensor::Empty({size.cast<int64_t>()}, DLDataType{kDLUInt, 8, 1}, device));
  }
  for (const tvm::ffi::Any& value : spec.at("values").cast<json::Array>()) {
    plan->values.push_back(PlanValue(value.cast<json::Object>(), *plan, storages, constants));
  }
  for (const tvm::ffi::Any& call : spec.at("calls").cast<json::Array>()) {
    auto entry = call.cast<json::Object>();
    auto name = entry.at("kernel").cast<tvm::ffi::String>();
    auto kernel = library->GetFunction(name, /*query_imports=*/true);
    if (!kernel.has_value()) throw std::runtime_error("the library's run plan calls " + std::string(name) + ", which it lacks");
    std::vector<tvm::ffi::AnyView> args;
    for (const tvm::ffi::Any& arg : entry.at("args").cast<json::Array>()) {
      args.emplace_back(plan->values.at(static_cast<size_t>(arg.cast<int64_t>())));
    }
    plan->kernels.push_back(*kernel);
    plan->args.push_back(std::move(args));
  }
  for (const tvm::ffi::Any& output : spec.at("outputs").cast<json::Array>()) {
    plan->outputs.push_back(plan->values.at(static_cast<size_t>(output.cast<int64_t>())));
  }
  return plan;
}

// Whether this run's inputs are exactly the plan's (count, shape, dtype, size).
bool PlanFits(const Plan& plan, int count, const int64_t* nbytes, const int* ndims, const int64_t* const* shapes,
              const char* const* dtypes) {
  if (count != static_cast<int>(plan.inputs.size())) return false;
  for (int i = 0; i < count; ++i) {
    const DLTensor* t = plan.inputs[i].operator->();
    if (ndims[i] != t->ndim || !std::equal(t->shape, t->shape + t->ndim, shapes[i])) return false;
    if (plan.input_dtypes[i] != dtypes[i]) return false;
    if (static_cast<size_t>(nbytes[i]) != tvm::ffi::GetDataSize(*t)) return false;
  }
  return true;
}

void RunPlan(Plan& plan, const void* const* data, const int64_t* nbytes) {
  for (size_t i = 0; i < plan.inputs.size(); ++i) plan.inputs[i].CopyFromBytes(data[i], static_cast<size_t>(nbytes[i]));
  tvm::ffi::Any ignored;
  for (size_t c = 0; c < plan.kernels.size(); ++c) {
    plan.kernels[c].CallPacked(plan.args[c].data(), static_cast<int32_t>(plan.args[c].size()), &ignored);
  }
}

bool HasShape(const tvm::runtime::Tensor& tensor, const tvm::ffi::Shape& shape, DLDataType dtype) {
  const DLTensor* t = tensor.operator->();
  if (t->ndim != static_cast<int>(shape.size()) || t->dtype != dtype) return false;
  return std::equal(shape.begin(), shape.end(), t->shape);
}

// The tensor input `i` is written into: on the CPU, the one from the last run when it has this
// shape and dtype and nothing else holds it (an output may be the input itself), else a new one. A
// new tensor per run cost a camera-size float input (602 KB, over malloc's mmap threshold) an mmap,
// its page faults and an munmap every run (docs/performance.md, the cost outside the kernels). GPU
// inputs stay one per run: the last run's kernels may still be reading theirs.
tvm::runtime::Tensor InputTensor(Model* model, size_t i, const tvm::ffi::Shape& shape, DLDataType dtype) {
  if (model->device.device_type != kDLCPU) return tvm::runtime::Tensor::Empty(shape, dtype, model->device);
  if (model->inputs.size() <= i) model->inputs.resize(i + 1);
  tvm::runtime::Tensor& kept = model->inputs[i];
  if (!kept.defined() || kept.use_count() != 1 || !HasShape(kept, shape, dtype)) {
    kept = tvm::runtime::Tensor::Empty(shape, dtype, model->device);
  }
  return kept;
}

bool SameLayout(const tvm::runtime::Tensor& a, const tvm::runtime::Tensor& b) {
  const DLTensor* x = a.operator->();
  const DLTensor* y = b.operator->();
  return x->ndim == y->ndim && x->dtype == y->dtype && std::equal(x->shape, x->shape + x->ndim, y->shape);
}

// Copy this run's outputs to the caller's buffers when each has the shape and dtype of the last
// run's output (which the caller read with ef_model_output and sized its buffers by) and fills its
// buffer exactly; else copy nothing: the caller reads them one by one. One C call per run instead
// of two more per output (docs/performance.md, the cost outside the kernels).
bool RunOutputsCopied(const std::vector<tvm::runtime::Tensor>& outputs, const std::vector<tvm::runtime::Tensor>& last,
                      int count, void* const* data, const int64_t* nbytes) {
  if (count != static_cast<int>(outputs.size()) || outputs.size() != last.size()) return false;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!SameLayout(outputs[i], last[i])) return false;
    if (tvm::ffi::GetDataSize(*outputs[i].operator->()) != static_cast<size_t>(nbytes[i])) return false;
  }
  for (size_t i = 0; i < outputs.size(); ++i) outputs[i].CopyToBytes(data[i], static_cast<size_t>(nbytes[i]));
  return true;
}

void Flatten(const tvm::ffi::Any& value, std::vector<tvm::runtime::Tensor>* out) {
  if (auto tensor = value.try_cast<tvm::runtime::Tensor>()) {
    out->push_back(*tensor);
    return;
  }
  if (auto items = value.try_cast<tvm::ffi::Array<tvm::ffi::Any>>()) {
    for (const tvm::ffi::Any& item : *items) Flatten(item, out);
    return;
  }
  throw std::runtime_error("the model returned a value that is neither a tensor nor a tuple: " +
                           value.GetTypeKey());
}

// The library being loaded on this thread (set by LoadVm), whose embedded executable is dropped.
thread_local const char* loading_path = nullptr;

// Drop the pages of the loading library's __tvm_ffi__library_bin from memory. They are read-only
// pages of the mapped file: reading them again re-reads the file, so this is safe at any time.
void ReleaseLibraryBin() {
  if (loading_path == nullptr) return;
  void* handle = dlopen(loading_path, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return;
  const auto* bin = static_cast<const unsigned char*>(dlsym(handle, "__tvm_ffi__library_bin"));
  if (bin != nullptr) {
    uint64_t size = 0;  // the blob starts with its length, a little-endian u64
    for (int i = 0; i < 8; ++i) size |= static_cast<uint64_t>(bin[i]) << (8 * i);
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(bin) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(bin) + 8 + size) & ~(page - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
  dlclose(handle);
}

struct Loading {  // loading_path for the duration of one load, however it ends
  explicit Loading(const char* path) { loading_path = path; }
  ~Loading() { loading_path = nullptr; }
};

tvm::ffi::Module LoadLibrary(const char* path) {
  Loading loading(path);
  tvm::ffi::Module library = tvm::ffi::Module::LoadFromFile(path);
  ReleaseLibraryBin();  // again: what the loader read after the executable (all of it, were the hook missing)
  return library;
}

// glibc's default mmap and trim thresholds (128 KiB), fixed. Left dynamic, glibc raises them on
// every large free (the loader's copies: the weights' size; the threshold to that size, the trim
// threshold to twice it) and from then keeps such blocks in the heap, handing memory back only when
// that much is free at its top: every inference's buffers then stay resident (MobileNetV2: +19 MB
// after the first inference instead of +8.5).
constexpr int kMallocThreshold = 128 * 1024;

bool UsesTvmPool() {
  static const bool tvm_pool = [] {
    const char* pool = std::getenv("EDGEFLEET_POOL");
    return pool != nullptr && std::strcmp(pool, "tvm") == 0;
  }();
  return tvm_pool;
}

// Point the loaded library's parallel launch (and barrier) at edgefleet's pool. TVM's loader set
// these data symbols to its own pool's functions when it opened the library.
void InstallPool(const char* path) {
  void* handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) throw std::runtime_error(std::string("cannot reopen the loaded library: ") + dlerror());
  if (auto* launch = static_cast<FTVMParallelLaunch*>(dlsym(handle, "__TVMBackendParallelLaunch"))) {
    *launch = edgefleet::pool::Launch;
  }
  if (auto* barrier = static_cast<FTVMParallelBarrier*>(dlsym(handle, "__TVMBackendParallelBarrier"))) {
    *barrier = edgefleet::pool::Barrier;
  }
  dlclose(handle);
}

struct Loaded {
  tvm::ffi::Module library;  // the file, whose imports hold the kernels
  tvm::ffi::Module vm;
};

Loaded LoadVm(const char* path, DLDevice device) {
  mallopt(M_MMAP_THRESHOLD, kMallocThreshold);
  mallopt(M_TRIM_THRESHOLD, kMallocThreshold);
  tvm::ffi::Module library = LoadLibrary(path);
  if (!UsesTvmPool()) InstallPool(path);
  malloc_trim(0);  // the loader's copy is freed by now; glibc keeps freed heap unless asked
  auto load = library->GetFunction("vm_load_executable", true);
  if (!load.has_value()) throw std::runtime_error("the library holds no Relax executable");
  tvm::ffi::Module vm = (*load)().cast<tvm::ffi::Module>();
  auto init = vm->GetFunction("vm_initialization", true);
  if (!init.has_value()) throw std::runtime_error("the executable cannot be initialised");
  // Shape functions always run on the CPU, so a GPU model also gets a CPU device.
  if (device.device_type == kDLCPU) {
    (*init)(static_cast<int>(device.device_type), device.device_id, kPooledAllocator);
  } else {
    (*init)(static_cast<int>(device.device_type), device.device_id, kPooledAllocator,
            static_cast<int>(kDLCPU), 0, kPooledAllocator);
  }
  return {library, vm};
}

// numpy's truth of one element: floats ignore the sign bit (-0.0 is zero, NaN is not).
bool NonZero(const uint8_t* element, DLDataType dtype) {
  int bytes = (dtype.bits + 7) / 8;
  uint8_t last_mask = (dtype.code == kDLFloat || dtype.code == kDLBfloat) ? 0x7F : 0xFF;
  for (int i = 0; i < bytes; ++i) {  // little-endian: the sign bit is in the last byte
    if (element[i] & (i == bytes - 1 ? last_mask : 0xFF)) return true;
  }
  return false;
}

// np.stack(np.atleast_1d(x).nonzero()): int64 [max(ndim, 1), count] of C-order indices.
tvm::runtime::Tensor NonZeroIndices(tvm::runtime::Tensor x) {
  const DLTensor* t = x.operator->();
  if (t->device.device_type != kDLCPU) throw std::runtime_error("relax.run.nonzero needs a CPU tensor");
  if (t->dtype.lanes != 1 || t->dtype.bits % 8 != 0) throw std::runtime_error("relax.run.nonzero needs whole-byte scalars");
  int64_t count = 1;
  for (int d = 0; d < t->ndim; ++d) count *= t->shape[d];
  int ndim = t->ndim > 0 ? t->ndim : 1;
  const uint8_t* data = static_cast<const uint8_t*>(t->data) + t->byte_offset;
  size_t step = t->dtype.bits / 8;
  std::vector<int64_t> hits;
  for (int64_t flat = 0; flat < count; ++flat) {
    if (NonZero(data + flat * step, t->dtype)) hits.push_back(flat);
  }
  auto out = tvm::runtime::Tensor::Empty({ndim, static_cast<int64_t>(hits.size())}, DLDataType{kDLInt, 64, 1}, DLDevice{kDLCPU, 0});
  int64_t* index = static_cast<int64_t*>(out->data);
  for (size_t h = 0; h < hits.size(); ++h) {
    int64_t rest = hits[h];
    for (int d = ndim - 1; d >= 0; --d) {
      int64_t extent = t->ndim > 0 ? t->shape[d] : 1;
      index[d * hits.size() + h] = rest % extent;
      rest /= extent;
    }
  }
  return out;
}

tvm::runtime::Tensor ShapeToTensor(tvm::ffi::Shape shape) {
  auto out = tvm::runtime::Tensor::Empty({static_cast<int64_t>(shape.size())}, DLDataType{kDLInt, 64, 1}, DLDevice{kDLCPU, 0});
  for (size_t i = 0; i < shape.size(); ++i) static_cast<int64_t*>(out->data)[i] = shape[i];
  return out;
}

TVM_FFI_STATIC_INIT_BLOCK() {
  tvm::ffi::reflection::GlobalDef()
      .def("relax.run.nonzero", NonZeroIndices)
      .def("relax.run.shape_to_tensor", ShapeToTensor);
  // TVM's library loader calls this with its copy of the executable, before the weights are copied
  // into tensors: the mapped file's pages are no longer needed there, and dropping them first keeps
  // one copy fewer in memory at the peak. The executable itself loads as before.
  constexpr const char* kLoadExecutable = "ffi.Module.load_from_bytes.relax.VMExecutable";
  if (auto load = tvm::ffi::Function::GetGlobal(kLoadExecutable)) {
    tvm::ffi::Function original = *load;
    tvm::ffi::Function::SetGlobal(kLoadExecutable, tvm::ffi::Function::FromTyped([original](const tvm::ffi::Bytes& bytes) {
      ReleaseLibraryBin();
      return original(bytes).cast<tvm::ffi::Module>();
    }), /*override=*/true);
  }
}

template <typename F>
int Guard(F body) {
  try {
    return body();
  } catch (const tvm::ffi::Error& err) {
    last_error = err.kind() + ": " + err.message();
  } catch (const std::exception& err) {
    last_error = err.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

}  // namespace

EF_API int ef_abi_version() { return EF_ABI_VERSION; }

EF_API const char* ef_last_error() { return last_error.c_str(); }

EF_API void* ef_model_load(const char* path, int device_type, int device_id) {
  Model* model = nullptr;
  int ok = Guard([&]() {
    DLDevice device{static_cast<DLDeviceType>(device_type), device_id};
    Loaded loaded = LoadVm(path, device);
    auto main = loaded.vm->GetFunction("main", true);
    if (!main.has_value()) throw std::runtime_error("the executable has no `main` function");
    model = new Model{loaded.vm, *main, device, LoadPlan(loaded.library, loaded.vm, device)};
    return 0;
  });
  return ok == 0 ? model : nullptr;
}

// A run on the calling thread's pool (one with workers): whether its workers spin through it,
// chosen by the model, told to the pool, and the run's time told back, however the run ends.
class PoolRun {
 public:
  explicit PoolRun(SpinChoice* choice) : choice_(edgefleet::pool::HasWorkers() ? choice : nullptr) {
    if (choice_ == nullptr) return;
    spin_ = choice_->Next();
    edgefleet::pool::RunBegins(spin_);
    start_ = std::chrono::steady_clock::now();
  }
  ~PoolRun() {
    if (choice_ == nullptr) return;
    edgefleet::pool::RunEnds();
    choice_->Took(spin_, std::chrono::steady_clock::now() - start_);
  }

 private:
  SpinChoice* choice_;
  bool spin_ = false;
  std::chrono::steady_clock::time_point start_;
};

EF_API int ef_model_run(void* handle, int count, const void* const* data, const int64_t* nbytes,
                        const int* ndims, const int64_t* const* shapes, const char* const* dtypes,
                        int out_count, void* const* out_data, const int64_t* out_nbytes, int* copied) {
  return Guard([&]() {
    Model* model = static_cast<Model*>(handle);
    PoolRun run(&model->spin);
    if (model->use_plan && model->plan && PlanFits(*model->plan, count, nbytes, ndims, shapes, dtypes)) {
      RunPlan(*model->plan, data, nbytes);
      *copied = RunOutputsCopied(model->plan->outputs, model->outputs, out_count, out_data, out_nbytes);
      model->outputs = model->plan->outputs;
      return static_cast<int>(model->outputs.size());
    }
    std::vector<tvm::ffi::Any> args;
    args.reserve(count);
    for (int i = 0; i < count; ++i) {
      tvm::ffi::Shape shape(shapes[i], shapes[i] + ndims[i]);
      DLDataType dtype = tvm::ffi::StringToDLDataType(dtypes[i]);
      tvm::runtime::Tensor tensor = InputTensor(model, i, shape, dtype);
      size_t expected = tvm::ffi::GetDataSize(*tensor.operator->());
      if (static_cast<size_t>(nbytes[i]) != expected) {
        throw std::runtime_error("input " + std::to_string(i) + " has " + std::to_string(nbytes[i]) +
                                 " bytes; its shape and dtype need " + std::to_string(expected));
      }
      tensor.CopyFromBytes(data[i], expected);
      args.emplace_back(tensor);
    }
    std::vector<tvm::ffi::AnyView> views(args.begin(), args.end());
    tvm::ffi::Any result;
    model->main.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    std::vector<tvm::runtime::Tensor> outputs;
    Flatten(result, &outputs);
    *copied = RunOutputsCopied(outputs, model->outputs, out_count, out_data, out_nbytes);
    model->outputs = std::move(outputs);
    return static_cast<int>(model->outputs.size());
  });
}

EF_API int ef_model_output(void* handle, int index, int* ndim, int64_t* shape, char* dtype,
                           int dtype_size, int64_t* nbytes) {
  return Guard([&]() {
    Model* model = static_cast<Model*>(handle);
    const tvm::runtime::Tensor& out = model->outputs.at(index);
    const DLTensor* t = out.operator->();
    if (t->ndim > EF_MAX_NDIM) throw std::runtime_error("an output has more than 8 dimensions");
    *ndim = t->ndim;
    std::memcpy(shape, t->shape, sizeof(int64_t) * t->ndim);
    std::string name = tvm::ffi::DLDataTypeToString(t->dtype);
    std::snprintf(dtype, dtype_size, "%s", name.c_str());
    *nbytes = static_cast<int64_t>(tvm::ffi::GetDataSize(*t));
    return 0;
  });
}

EF_API int ef_model_output_copy(void* handle, int index, void* dst, int64_t nbytes) {
  return Guard([&]() {
    Model* model = static_cast<Model*>(handle);
    model->outputs.at(index).CopyToBytes(dst, static_cast<size_t>(nbytes));
    return 0;
  });
}

EF_API void ef_model_free(void* handle) { delete static_cast<Model*>(handle); }

EF_API int ef_model_plan(void* handle, int enable) {
  Model* model = static_cast<Model*>(handle);
  model->use_plan = enable != 0;
  return model->use_plan && model->plan ? 1 : 0;
}

EF_API int ef_set_threads(int count) {
  return Guard([&]() {
    if (count < 1) throw std::runtime_error("a pool needs at least one thread");
    if (!UsesTvmPool()) {
      edgefleet::pool::SetThreads(count);
      return 0;
    }
    auto configure = tvm::ffi::Function::GetGlobal("runtime.config_threadpool");
    if (!configure.has_value()) throw std::runtime_error("the runtime has no thread pool");
    // Affinity mode 1 (big cores first), as TVM's Python helpers use for benchmarks.
    (*configure)(1, count);
    return 0;
  });
}

EF_API int ef_pool_tasks(int64_t* by_caller, int64_t* by_workers) {
  if (edgefleet::pool::TasksRun(by_caller, by_workers)) return 0;
  last_error = "this thread has no edgefleet pool of more than one thread";
  return -1;
}
