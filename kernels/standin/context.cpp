// context.cpp: the driver stand-in's initialization (cuInit, ROTADAM_STANDIN_DEVICES and
// ROTADAM_STANDIN_TOTAL_MEM), its devices and their attributes (an emulated H100 SXM, sm_90), the refcounted
// primary contexts (activation, and destruction with the leak report) and the per-thread current context,
// cuMemGetInfo_v2 beside cuDeviceTotalMem_v2, and the names and strings of the driver's errors. driver.h has
// the overview of the stand-in and what each of its files owns.
#include "driver.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace rotadam_standin {

const char* error_name(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_DEINITIALIZED: return "CUDA_ERROR_DEINITIALIZED";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_NO_BINARY_FOR_GPU: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
    case CUDA_ERROR_INVALID_PTX: return "CUDA_ERROR_INVALID_PTX";
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION: return "CUDA_ERROR_UNSUPPORTED_PTX_VERSION";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_CONTEXT_IS_DESTROYED: return "CUDA_ERROR_CONTEXT_IS_DESTROYED";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_PERMITTED: return "CUDA_ERROR_NOT_PERMITTED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_UNKNOWN: return "CUDA_ERROR_UNKNOWN";
  }
  return nullptr;
}

namespace {

// The error of a call made before a successful cuInit: CUDA_ERROR_NOT_INITIALIZED, saying why when cuInit
// was called and failed (a malformed setting), so that later calls do not claim it was never called.
CUresult not_initialized(Api& a) {
  return a.fail(CUDA_ERROR_NOT_INITIALIZED, a.s.init_error == CUDA_SUCCESS
                                                ? std::string("cuInit has not been called")
                                                : "cuInit failed: " + a.s.init_message);
}

}  // namespace

CUresult current(Api& a, Context** out, bool allow_sticky) {
  if (!a.s.initialized) return not_initialized(a);
  Context* c = t_current;
  if (c == nullptr) return a.fail(CUDA_ERROR_INVALID_CONTEXT, "no current context on this thread");
  if (c->refcount == 0)
    return a.fail(CUDA_ERROR_INVALID_CONTEXT,
                  "the current context (" + c->name() + ") was destroyed when its last reference was released");
  if (c->sticky != CUDA_SUCCESS && !allow_sticky) return a.sticky(c);
  *out = c;
  return CUDA_SUCCESS;
}

namespace {

const char* error_string(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_DEINITIALIZED: return "driver shutting down";
    case CUDA_ERROR_NO_DEVICE: return "no CUDA-capable device is detected";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
    case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
    case CUDA_ERROR_NO_BINARY_FOR_GPU: return "no kernel image is available for execution on the device";
    case CUDA_ERROR_INVALID_PTX: return "a PTX JIT compilation failed";
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION: return "the provided PTX was compiled with an unsupported toolchain.";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_NOT_READY: return "device not ready";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case CUDA_ERROR_CONTEXT_IS_DESTROYED: return "context is destroyed";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_NOT_PERMITTED: return "operation not permitted";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    case CUDA_ERROR_UNKNOWN: return "unknown error";
  }
  return nullptr;
}

CUresult device_of(Api& a, CUdevice dev) {
  if (!a.s.initialized) return not_initialized(a);
  if (dev < 0 || dev >= a.s.device_count)
    return a.fail(CUDA_ERROR_INVALID_DEVICE, "device " + std::to_string(dev) + " does not exist (" +
                                                 std::to_string(a.s.device_count) + " device(s))");
  return CUDA_SUCCESS;
}

// ---- contexts -------------------------------------------------------------------------------------------
void activate(State& s, Context* c) {
  c->sticky = CUDA_SUCCESS;
  c->sticky_msg.clear();
  c->streams.clear();
  c->per_thread.clear();
  c->legacy = nullptr;
  c->legacy = new_stream(s, c, Stream::LEGACY, 0);
}

// The last reference to a primary context is released: queued work is discarded, handles of its streams,
// events and modules die, and allocations still live are reported and freed.
void destroy_context(Api& a, Context* c) {
  State& s = a.s;
  for (auto& st : c->streams) st->queue.clear();
  for (auto it = s.streams.begin(); it != s.streams.end();)
    it = it->second->ctx == c ? s.streams.erase(it) : std::next(it);
  for (auto it = s.events.begin(); it != s.events.end();)
    it = it->second->ctx == c ? s.events.erase(it) : std::next(it);
  for (auto it = s.modules.begin(); it != s.modules.end();) {
    if (it->second->ctx == c) {
      for (auto& f : it->second->functions) s.functions.erase(reinterpret_cast<CUfunction>(f.second.get()));
      it = s.modules.erase(it);
    } else {
      ++it;
    }
  }
  c->streams.clear();
  c->per_thread.clear();
  c->legacy = nullptr;
  std::vector<Allocation> leaked;
  for (auto* m : {&s.device_allocs, &s.host_allocs}) {
    for (auto it = m->begin(); it != m->end();) {
      if (it->second.ctx == c) {
        leaked.push_back(std::move(it->second));
        it = m->erase(it);
      } else {
        ++it;
      }
    }
  }
  std::sort(leaked.begin(), leaked.end(), [](const Allocation& x, const Allocation& y) { return x.serial < y.serial; });
  for (const Allocation& al : leaked) {
    record(s, std::string(a.name) + ": " + al.describe() + " was still live when " + a.where() + " destroyed " +
                  c->name() + " (freed now)");
    if (!al.pinned) s.used_bytes -= al.size;
    munmap(al.map, al.map_len);
  }
  c->sticky = CUDA_SUCCESS;
  c->sticky_msg.clear();
}

// ---- device attributes of the emulated GPU (an H100 SXM, sm_90) ------------------------------------------
bool attribute(int attrib, int* value) {
  static const struct {
    int attrib;
    int value;
  } kTable[] = {
      {1, 1024},        // MAX_THREADS_PER_BLOCK
      {2, 1024},        // MAX_BLOCK_DIM_X
      {3, 1024},        // MAX_BLOCK_DIM_Y
      {4, 64},          // MAX_BLOCK_DIM_Z
      {5, 2147483647},  // MAX_GRID_DIM_X
      {6, 65535},       // MAX_GRID_DIM_Y
      {7, 65535},       // MAX_GRID_DIM_Z
      {8, 49152},       // MAX_SHARED_MEMORY_PER_BLOCK
      {9, 65536},       // TOTAL_CONSTANT_MEMORY
      {10, 32},         // WARP_SIZE
      {11, 2147483647}, // MAX_PITCH
      {12, 65536},      // MAX_REGISTERS_PER_BLOCK
      {13, 1980000},    // CLOCK_RATE (kHz)
      {14, 512},        // TEXTURE_ALIGNMENT
      {15, 1},          // GPU_OVERLAP
      {16, 132},        // MULTIPROCESSOR_COUNT
      {17, 0},          // KERNEL_EXEC_TIMEOUT
      {18, 0},          // INTEGRATED
      {19, 1},          // CAN_MAP_HOST_MEMORY
      {20, 0},          // COMPUTE_MODE (default)
      {30, 512},        // SURFACE_ALIGNMENT
      {31, 1},          // CONCURRENT_KERNELS
      {32, 1},          // ECC_ENABLED
      {33, 0},          // PCI_BUS_ID
      {34, 0},          // PCI_DEVICE_ID
      {35, 0},          // TCC_DRIVER
      {36, 2619000},    // MEMORY_CLOCK_RATE (kHz)
      {37, 5120},       // GLOBAL_MEMORY_BUS_WIDTH (bits)
      {38, 52428800},   // L2_CACHE_SIZE
      {39, 2048},       // MAX_THREADS_PER_MULTIPROCESSOR
      {40, 2},          // ASYNC_ENGINE_COUNT
      {41, 1},          // UNIFIED_ADDRESSING
      {50, 0},          // PCI_DOMAIN_ID
      {51, 32},         // TEXTURE_PITCH_ALIGNMENT
      {75, 9},          // COMPUTE_CAPABILITY_MAJOR
      {76, 0},          // COMPUTE_CAPABILITY_MINOR
      {78, 1},          // STREAM_PRIORITIES_SUPPORTED
      {79, 1},          // GLOBAL_L1_CACHE_SUPPORTED
      {80, 1},          // LOCAL_L1_CACHE_SUPPORTED
      {81, 233472},     // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
      {82, 65536},      // MAX_REGISTERS_PER_MULTIPROCESSOR
      {83, 0},          // MANAGED_MEMORY (cuMemAllocManaged is not implemented)
      {84, 0},          // MULTI_GPU_BOARD
      {86, 0},          // HOST_NATIVE_ATOMIC_SUPPORTED
      {87, 2},          // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
      {88, 0},          // PAGEABLE_MEMORY_ACCESS
      {89, 0},          // CONCURRENT_MANAGED_ACCESS
      {90, 1},          // COMPUTE_PREEMPTION_SUPPORTED
      {95, 0},          // COOPERATIVE_LAUNCH (cuLaunchCooperativeKernel is not implemented)
      {97, 232448},     // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
      {106, 32},        // MAX_BLOCKS_PER_MULTIPROCESSOR
      {111, 1024},      // RESERVED_SHARED_MEMORY_PER_BLOCK
      {115, 0},         // MEMORY_POOLS_SUPPORTED (no cuMemAllocAsync: cudarc uses cuMemAlloc_v2)
      {120, 0},         // CLUSTER_LAUNCH (cuLaunchKernelEx is not implemented)
  };
  for (const auto& e : kTable)
    if (e.attrib == attrib) {
      *value = e.value;
      return true;
    }
  return false;
}

// Reads one of the stand-in's settings from the environment into *out: `fallback` when the variable is unset
// or empty, else decimal digits and nothing more, or with `suffixes` one of K, M, G, T (binary units) right
// after them, giving a value in [lo, hi]. Anything else, an overflow included, returns false with a reason
// naming the variable, its value and what is expected: a typo must fail cuInit, not become another size
// (16777216T once wrapped to 0 bytes, and "80GB" silently read as 80G).
bool read_setting(const char* var, uint64_t fallback, uint64_t lo, uint64_t hi, bool suffixes, const char* expected,
                  uint64_t* out, std::string* why) {
  const char* text = std::getenv(var);
  if (text == nullptr || *text == '\0') {
    *out = fallback;
    return true;
  }
  const std::string head = std::string(var) + "=\"" + text + "\" ";
  const std::string tail = " (expected " + std::string(expected) + ")";
  uint64_t v = 0;
  const char* p = text;
  for (; *p >= '0' && *p <= '9'; ++p) {
    const uint64_t digit = static_cast<uint64_t>(*p - '0');
    if (v > (UINT64_MAX - digit) / 10) {
      *why = head + "overflows 64 bits" + tail;
      return false;
    }
    v = v * 10 + digit;
  }
  int shift = 0;
  if (suffixes && p != text) {
    switch (*p) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      default: break;
    }
    if (shift != 0) ++p;
  }
  if (p == text || *p != '\0') {
    *why = head + "is not " + (suffixes ? "a number with an optional unit" : "a whole number") + tail;
    return false;
  }
  if (v > (UINT64_MAX >> shift)) {
    *why = head + "overflows 64 bits" + tail;
    return false;
  }
  v <<= shift;
  if (v < lo || v > hi) {
    *why = head + "is out of range" + tail;
    return false;
  }
  *out = v;
  return true;
}

}  // namespace
}  // namespace rotadam_standin

using namespace rotadam_standin;

// ==== exported: initialization, devices, contexts ==========================================================
STANDIN_API CUresult cuInit(unsigned int flags) {
  Api a("cuInit");
  if (flags != 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "flags must be 0, got " + std::to_string(flags));
  if (!a.s.initialized && a.s.init_error == CUDA_SUCCESS) {
    uint64_t devices = 0, total = 0;
    std::string why;
    if (!read_setting("ROTADAM_STANDIN_DEVICES", 1, 0, kMaxDevices, false,
                      ("a whole number of devices from 0 to " + std::to_string(kMaxDevices)).c_str(), &devices,
                      &why) ||
        !read_setting("ROTADAM_STANDIN_TOTAL_MEM", kDefaultTotalMem, 1, UINT64_MAX, true,
                      "a positive number of bytes below 2^64: digits, optionally followed by K, M, G or T for "
                      "2^10, 2^20, 2^30 or 2^40, e.g. 80G",
                      &total, &why)) {
      // Kept, as the driver keeps the outcome of its first cuInit: every later cuInit fails alike.
      a.s.init_error = CUDA_ERROR_INVALID_VALUE;
      a.s.init_message = why;
    } else {
      a.s.device_count = static_cast<int>(devices);
      a.s.total_mem = total;
      for (int d = 0; d < a.s.device_count; ++d) {
        a.s.contexts.push_back(std::make_unique<Context>());
        a.s.contexts.back()->device = d;
      }
      a.s.initialized = true;
    }
  }
  if (a.s.init_error != CUDA_SUCCESS) return a.fail(a.s.init_error, a.s.init_message);
  if (a.s.device_count == 0) return a.fail(CUDA_ERROR_NO_DEVICE, "ROTADAM_STANDIN_DEVICES=0: no device");
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDeviceGetCount(int* count) {
  Api a("cuDeviceGetCount");
  if (!a.s.initialized) return not_initialized(a);
  if (count == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "count is NULL");
  *count = a.s.device_count;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  Api a("cuDeviceGet");
  if (CUresult r = device_of(a, ordinal)) return r;
  if (device == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "device is NULL");
  *device = ordinal;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
  Api a("cuDeviceGetName");
  if (CUresult r = device_of(a, dev)) return r;
  if (name == nullptr || len <= 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "name is NULL or len <= 0");
  std::snprintf(name, static_cast<size_t>(len), "rotadam CUDA stand-in (emulated sm_90)");
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDeviceGetAttribute(int* pi, int attrib, CUdevice dev) {
  Api a("cuDeviceGetAttribute");
  if (CUresult r = device_of(a, dev)) return r;
  if (pi == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "pi is NULL");
  if (!attribute(attrib, pi))
    return a.fail(CUDA_ERROR_INVALID_VALUE,
                  "attribute " + std::to_string(attrib) + " is not in the stand-in's table of sm_90 attributes");
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  Api a("cuDeviceTotalMem_v2");
  if (CUresult r = device_of(a, dev)) return r;
  if (bytes == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "bytes is NULL");
  *bytes = a.s.total_mem;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  Api a("cuMemGetInfo_v2");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (free_bytes == nullptr || total_bytes == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "NULL output");
  *total_bytes = a.s.total_mem;
  *free_bytes = a.s.total_mem - std::min(a.s.used_bytes, a.s.total_mem);
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  Api a("cuDevicePrimaryCtxRetain");
  if (CUresult r = device_of(a, dev)) return r;
  if (pctx == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "pctx is NULL");
  Context* c = a.s.contexts[static_cast<size_t>(dev)].get();
  if (c->refcount++ == 0) activate(a.s, c);
  *pctx = reinterpret_cast<CUcontext>(c);
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  Api a("cuDevicePrimaryCtxRelease_v2");
  if (CUresult r = device_of(a, dev)) return r;
  Context* c = a.s.contexts[static_cast<size_t>(dev)].get();
  if (c->refcount == 0)
    return a.fail(CUDA_ERROR_INVALID_CONTEXT, c->name() + " released more often than retained");
  if (--c->refcount == 0) destroy_context(a, c);
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuCtxSetCurrent(CUcontext ctx) {
  Api a("cuCtxSetCurrent");
  if (!a.s.initialized) return not_initialized(a);
  if (ctx == nullptr) {
    t_current = nullptr;
    return CUDA_SUCCESS;
  }
  for (const auto& c : a.s.contexts)
    if (reinterpret_cast<CUcontext>(c.get()) == ctx) {
      if (c->refcount == 0)
        return a.fail(CUDA_ERROR_CONTEXT_IS_DESTROYED, c->name() + " is not retained (destroyed)");
      t_current = c.get();
      return CUDA_SUCCESS;
    }
  return a.fail(CUDA_ERROR_INVALID_CONTEXT, "context handle " + hex(reinterpret_cast<uint64_t>(ctx)) + " is unknown");
}

STANDIN_API CUresult cuCtxGetCurrent(CUcontext* pctx) {
  Api a("cuCtxGetCurrent");
  if (!a.s.initialized) return not_initialized(a);
  if (pctx == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "pctx is NULL");
  *pctx = reinterpret_cast<CUcontext>(t_current);
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuCtxSynchronize(void) {
  Api a("cuCtxSynchronize");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  sync_context(a, c);
  return after_run(a, c);
}

STANDIN_API CUresult cuGetErrorString(CUresult error, const char** pstr) {
  if (pstr == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pstr = error_string(error);
  return *pstr != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

STANDIN_API CUresult cuGetErrorName(CUresult error, const char** pstr) {
  if (pstr == nullptr) return CUDA_ERROR_INVALID_VALUE;
  *pstr = error_name(error);
  return *pstr != nullptr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
