// driver.cpp: a stand-in for the CUDA driver API (libcuda.so), enough for cudarc 0.19 to run the
// project's CUDA backend on a machine without a GPU, with the kernels executed by the CPU emulator.
//
// What it models:
//   - one or more devices (ROTADAM_STANDIN_DEVICES, default 1) that claim to be sm_90 GPUs, each with a
//     refcounted primary context; the current context is per thread;
//   - device memory: every cuMemAlloc_v2 is its own mapping of host memory (device pointers are host
//     pointers), 256-byte aligned, ending at a PROT_NONE guard page, filled with 0xFF bytes (NaN as
//     floats). A free makes the whole mapping PROT_NONE and keeps it in a bounded quarantine, so a freed
//     address is not handed out again soon and a kernel touching it faults instead of reading stale data;
//   - streams, events and the legacy default stream's implicit synchronization: work (launches, copies,
//     memsets, cuBLAS calls) is queued per stream and runs only where a GPU would guarantee completion to the
//     host: stream, event and context synchronization, blocking copies, copies into pageable memory,
//     cuMemFree_v2 / cuMemFreeHost, and queries (cuStreamQuery / cuEventQuery run what they ask about and
//     report it done). A stream waiting on an event runs that event's work when the waiting stream is run;
//   - modules from PTX text (ptx.cpp), bound by name to the emulator's kernels with the parameter sizes
//     checked against the C++ signatures; launches copy exactly the bytes each PTX parameter declares and
//     check that every pointer argument is NULL or inside a live allocation;
//   - errors as the real driver returns them, plus a message naming the call: on stderr once
//     ("cuda stand-in: …"), in an accumulated report (rotadam_standin_errors) and as this thread's last
//     error (rotadam_standin_last_error). A failure while queued work runs, and a bad pointer passed to a
//     kernel or to cuBLAS, leave the context unusable (sticky), as a GPU fault would.
//
// What it cannot check: reads and writes a kernel makes through valid pointers beyond the bounds the
// kernel was meant to use (unless they reach a guard page or freed memory, which kills the process with a
// "memory fault" line naming the running work), the PTX bodies (the emulator runs the C++ copy), races
// between streams (all work runs one item at a time in a valid order), timing, and anything cudarc does not
// call: every entry point not implemented here is not exported, so calling it fails loudly in the loader.
#include "standin.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

namespace {

constexpr uint64_t kAllocAlign = 256;                        // cuMemAlloc's alignment guarantee
constexpr uint64_t kDefaultTotalMem = 80ull << 30;           // an 80 GiB H100
constexpr size_t kQuarantineEntries = 4096;                  // freed mappings kept PROT_NONE …
constexpr uint64_t kQuarantineBytes = 256ull << 30;          // … up to this much address space
constexpr unsigned kMaxDynamicSmem = 48 * 1024;              // without cuFuncSetAttribute (not exported)
constexpr int kMaxPtxMajor = 8, kMaxPtxMinor = 8;            // a CUDA 12.9 driver reads PTX ISA 8.8
constexpr int kDeviceSm = 90;
constexpr size_t kMaxReportLines = 1000;                     // distinct lines kept; later ones are only counted

struct Context;
struct Stream;

// One allocation: device memory (cuMemAlloc_v2) or pinned host memory (cuMemHostAlloc, cuMemAllocHost_v2).
struct Allocation {
  uint64_t base = 0, size = 0;  // what the caller sees
  uint64_t serial = 0;          // 1, 2, … over all allocations of the process
  std::string origin;           // "cuMemAlloc_v2, API call #123"
  Context* ctx = nullptr;
  bool pinned = false;
  char* map = nullptr;  // the mapping behind it, guard page included
  size_t map_len = 0;
  std::string freed_by;  // set once freed (the quarantine)

  std::string describe() const {
    char b[96];
    std::snprintf(b, sizeof b, " (%llu bytes at 0x%llx, from ", static_cast<unsigned long long>(size),
                  static_cast<unsigned long long>(base));
    return std::string(pinned ? "pinned host allocation #" : "allocation #") + std::to_string(serial) + b +
           origin + ")";
  }
};

// A point in another stream's queue that a work item must wait for.
struct Dep {
  std::shared_ptr<Stream> stream;
  uint64_t seq;
};

// One queued operation. `run` returns "" or what went wrong (the context then fails, sticky).
struct Work {
  uint64_t seq = 0;  // process-wide enqueue order
  std::string what;  // "cuLaunchKernel(adamw_step), API call #55"
  std::vector<Dep> deps;
  std::function<std::string()> run;
};

struct Stream {
  enum Kind { LEGACY, PER_THREAD, CREATED };
  Kind kind = CREATED;
  unsigned flags = 0;  // CU_STREAM_DEFAULT (0) or CU_STREAM_NON_BLOCKING (1)
  Context* ctx = nullptr;
  uint64_t serial = 0;
  std::deque<Work> queue;
  uint64_t last_seq = 0;   // the last work enqueued
  bool destroyed = false;  // cuStreamDestroy_v2 called; queued work still runs

  // Whether it synchronizes with the legacy default stream (every stream but non-blocking ones).
  bool blocking() const { return kind != LEGACY && (flags & 1u) == 0; }
  std::string name() const {
    switch (kind) {
      case LEGACY: return "the legacy default stream";
      case PER_THREAD: return "a per-thread default stream";
      default: return "stream #" + std::to_string(serial);
    }
  }
};

struct Event {
  uint64_t serial = 0;
  Context* ctx = nullptr;
  unsigned flags = 0;
  bool recorded = false;
  std::shared_ptr<Stream> stream;  // where it was last recorded
  uint64_t seq = 0;                // … after which work
  uint64_t generation = 0;         // cuEventRecord count, so a stale marker does not stamp a newer record
  bool stamped = false;            // the recorded work has run; time_ms is when
  double time_ms = 0;
};

struct Module;

struct Function {
  Module* module = nullptr;
  const EmuKernel* kernel = nullptr;
  PtxEntry entry;
  std::vector<unsigned char> is_pointer;  // per parameter, from the C++ signature
};

struct Module {
  uint64_t serial = 0;
  Context* ctx = nullptr;
  PtxModule ptx;
  std::map<std::string, std::unique_ptr<Function>> functions;
};

struct Context {
  CUdevice device = 0;
  int refcount = 0;  // primary-context retains minus releases; 0 = not active
  CUresult sticky = CUDA_SUCCESS;
  std::string sticky_msg;
  std::shared_ptr<Stream> legacy;
  std::map<std::thread::id, std::shared_ptr<Stream>> per_thread;
  std::vector<std::shared_ptr<Stream>> streams;  // every stream with a handle or queued work, legacy first

  std::string name() const { return "device " + std::to_string(device) + "'s primary context"; }
};

// All of the stand-in's state, behind one mutex (the emulator's own globals apart).
struct State {
  std::mutex mu;
  bool initialized = false;
  int device_count = 1;
  uint64_t total_mem = kDefaultTotalMem;
  std::vector<std::unique_ptr<Context>> contexts;  // one primary context per device, never freed
  std::map<uint64_t, Allocation> device_allocs;    // live, by base
  std::map<uint64_t, Allocation> host_allocs;      // live pinned host memory, by base
  std::deque<Allocation> quarantine;               // freed, mapped PROT_NONE
  uint64_t quarantine_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t next_serial = 1, next_seq = 1, calls = 0;
  std::unordered_map<CUstream, std::shared_ptr<Stream>> streams;  // handles from cuStreamCreate
  std::unordered_map<CUevent, std::shared_ptr<Event>> events;
  std::unordered_map<CUmodule, std::unique_ptr<Module>> modules;
  std::unordered_map<CUfunction, Function*> functions;
  // The error report: distinct lines in order, how often each occurred, all errors counted.
  std::vector<std::string> report;
  std::vector<uint64_t> report_counts;
  std::map<std::string, size_t> report_index;
  std::set<std::string> printed;  // lines already written to stderr (never cleared)
  uint64_t error_count = 0;
  uint64_t unlisted = 0;  // errors beyond kMaxReportLines distinct lines
  std::string report_text;  // rotadam_standin_errors' buffer
  struct sigaction previous_segv {};
  bool segv_installed = false;
};

State& state() {
  static State* s = new State();  // never destroyed: the library may be dlclose'd and reopened
  return *s;
}

thread_local Context* t_current = nullptr;
thread_local std::string t_last_error;
thread_local const char* t_running = nullptr;  // the work item this thread is running (fault handler)

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

std::string hex(uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// Adds one line to the error report (lock held): counted every time, printed to stderr once.
void record(State& s, const std::string& line) {
  ++s.error_count;
  t_last_error = line;
  auto it = s.report_index.find(line);
  if (it != s.report_index.end()) {
    ++s.report_counts[it->second];
    return;
  }
  if (s.report.size() >= kMaxReportLines) {
    if (s.unlisted++ == 0)
      std::fprintf(stderr, "cuda stand-in: more than %zu distinct errors; further ones are only counted\n",
                   kMaxReportLines);
    return;
  }
  s.report_index.emplace(line, s.report.size());
  s.report.push_back(line);
  s.report_counts.push_back(1);
  if (s.printed.insert(line).second) std::fprintf(stderr, "cuda stand-in: %s\n", line.c_str());
}

// Fails the current context as a GPU fault would: every later call in it returns `code`.
void make_sticky(State& s, Context* c, CUresult code, const std::string& line) {
  record(s, line);
  if (c != nullptr && c->sticky == CUDA_SUCCESS) {
    c->sticky = code;
    c->sticky_msg = line;
  }
}

// One call of an exported entry point: holds the lock, numbers the call, formats failures.
struct Api {
  State& s;
  std::unique_lock<std::mutex> lock;
  const char* name;
  uint64_t number;
  bool quiet = false;   // a check on behalf of libcublas.so: it reports the failure itself …
  std::string message;  // … from this message

  explicit Api(const char* n) : s(state()), lock(s.mu), name(n), number(++s.calls) {}

  std::string where() const { return std::string(name) + ", API call #" + std::to_string(number); }

  // A detected misuse: reported, returned.
  CUresult fail(CUresult code, const std::string& msg) {
    message = msg;
    if (!quiet) record(s, std::string(name) + ": " + msg + " [" + error_name(code) + "]");
    return code;
  }
  // The consequence of an earlier failure: this thread's last error only, not a new report line.
  CUresult sticky(Context* c) {
    message = std::string("the context is unusable after an earlier error [") + error_name(c->sticky) +
              "]: " + c->sticky_msg;
    if (!quiet) t_last_error = std::string(name) + ": " + message;
    return c->sticky;
  }
};

// The current context, active and not failed (unless `allow_sticky`).
CUresult current(Api& a, Context** out, bool allow_sticky = false) {
  if (!a.s.initialized) return a.fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  Context* c = t_current;
  if (c == nullptr) return a.fail(CUDA_ERROR_INVALID_CONTEXT, "no current context on this thread");
  if (c->refcount == 0)
    return a.fail(CUDA_ERROR_INVALID_CONTEXT,
                  "the current context (" + c->name() + ") was destroyed when its last reference was released");
  if (c->sticky != CUDA_SUCCESS && !allow_sticky) return a.sticky(c);
  *out = c;
  return CUDA_SUCCESS;
}

CUresult device_of(Api& a, CUdevice dev) {
  if (!a.s.initialized) return a.fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
  if (dev < 0 || dev >= a.s.device_count)
    return a.fail(CUDA_ERROR_INVALID_DEVICE, "device " + std::to_string(dev) + " does not exist (" +
                                                 std::to_string(a.s.device_count) + " device(s))");
  return CUDA_SUCCESS;
}

// ---- the fault handler: names the work that touched a guard page or freed memory ------------------------
void write_str(const char* p) {
  ssize_t n = static_cast<ssize_t>(std::strlen(p));
  while (n > 0) {
    ssize_t w = write(2, p, static_cast<size_t>(n));
    if (w <= 0) return;
    p += w;
    n -= w;
  }
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  if (t_running != nullptr) {
    char addr[24];
    uint64_t v = reinterpret_cast<uint64_t>(info->si_addr);
    int i = 23;
    addr[i] = '\0';
    do {
      addr[--i] = "0123456789abcdef"[v & 15];
      v >>= 4;
    } while (v != 0 && i > 2);
    addr[--i] = 'x';
    addr[--i] = '0';
    write_str("cuda stand-in: memory fault at ");
    write_str(addr + i);
    write_str(" while running ");
    write_str(t_running);
    write_str(" (a guard page after an allocation, freed memory or an address no allocation covers; a GPU "
              "would report CUDA_ERROR_ILLEGAL_ADDRESS)\n");
  }
  const struct sigaction& prev = state().previous_segv;
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, uctx);
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
  } else {
    signal(sig, SIG_DFL);  // returning re-executes the access, which now kills the process
  }
}

void install_fault_handler(State& s) {
  if (s.segv_installed) return;
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &s.previous_segv) == 0) s.segv_installed = true;
}

// ---- memory ---------------------------------------------------------------------------------------------
uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Maps `size` bytes ending just before a PROT_NONE guard page, 256-byte aligned, filled with 0xFF.
bool map_memory(uint64_t size, Allocation* a) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t rounded = round_up(size, kAllocAlign);
  const uint64_t body = round_up(rounded, page);
  const uint64_t len = body + page;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  char* base = static_cast<char*>(m);
  if (mprotect(base + body, page, PROT_NONE) != 0) {
    munmap(m, len);
    return false;
  }
  a->map = base;
  a->map_len = len;
  a->base = reinterpret_cast<uint64_t>(base + (body - rounded));
  a->size = size;
  std::memset(reinterpret_cast<void*>(a->base), 0xff, rounded);
  return true;
}

// Frees an allocation into the quarantine: inaccessible, its address space kept for a while.
void quarantine(State& s, Allocation a, const std::string& freed_by) {
  mprotect(a.map, a.map_len, PROT_NONE);
  madvise(a.map, a.map_len, MADV_DONTNEED);
  a.freed_by = freed_by;
  s.quarantine_bytes += a.map_len;
  s.quarantine.push_back(std::move(a));
  while (s.quarantine.size() > kQuarantineEntries || s.quarantine_bytes > kQuarantineBytes) {
    Allocation& old = s.quarantine.front();
    munmap(old.map, old.map_len);
    s.quarantine_bytes -= old.map_len;
    s.quarantine.pop_front();
  }
}

// The live allocation in `m` containing [p, p + n) (n = 0: p may be one past the end), or nullptr.
const Allocation* find(const std::map<uint64_t, Allocation>& m, uint64_t p, uint64_t n) {
  auto it = m.upper_bound(p);
  if (it == m.begin()) return nullptr;
  --it;
  const Allocation& a = it->second;
  if (p < a.base || p - a.base > a.size || n > a.size - (p - a.base)) return nullptr;
  return &a;
}

// Any live allocation in `m` overlapping [p, p + n), n > 0.
const Allocation* overlapping(const std::map<uint64_t, Allocation>& m, uint64_t p, uint64_t n) {
  auto it = m.upper_bound(p);
  if (it != m.begin()) {
    auto prev = std::prev(it);
    if (p < prev->second.base + prev->second.size) return &prev->second;
  }
  if (it != m.end() && it->second.base < p + n) return &it->second;
  return nullptr;
}

// Where `p` points, for a message: into which allocation (live or freed), or nowhere.
std::string describe_address(State& s, uint64_t p) {
  auto in = [p](const Allocation& a) { return p >= a.base && p <= a.base + a.size; };
  for (const auto* m : {&s.device_allocs, &s.host_allocs}) {
    auto it = m->upper_bound(p);
    if (it != m->begin() && in(std::prev(it)->second)) {
      const Allocation& a = std::prev(it)->second;
      return hex(p) + " is " + std::to_string(p - a.base) + " bytes into " + a.describe();
    }
  }
  for (auto it = s.quarantine.rbegin(); it != s.quarantine.rend(); ++it)
    if (in(*it))
      return hex(p) + " is " + std::to_string(p - it->base) + " bytes into " + it->describe() +
             ", which was freed by " + it->freed_by;
  return hex(p) + " is not in any live device allocation";
}

// "" when [p, p + n) lies inside one live device allocation of context c (n may be 0), else why not.
std::string check_device_range(State& s, Context* c, uint64_t p, uint64_t n, const char* what) {
  if (n > 0 && p + n < p) return std::string(what) + ": " + hex(p) + " + " + std::to_string(n) + " bytes overflows";
  const Allocation* a = find(s.device_allocs, p, n);
  if (a == nullptr) {
    const Allocation* start = find(s.device_allocs, p, 0);
    if (start != nullptr)
      return std::string(what) + ": " + std::to_string(n) + " bytes at " + hex(p) + " run " +
             std::to_string(p + n - (start->base + start->size)) + " bytes past the end of " + start->describe();
    return std::string(what) + ": " + describe_address(s, p);
  }
  if (a->ctx != c)
    return std::string(what) + ": " + a->describe() + " belongs to " + a->ctx->name() + ", not to the current " +
           c->name();
  return "";
}

// Classifies a host range for a copy: pinned (true) or pageable (false); "" or why it is not host memory.
std::string check_host_range(State& s, uint64_t p, uint64_t n, const char* what, bool* pinned) {
  *pinned = false;
  if (p == 0) return std::string(what) + ": NULL host pointer";
  if (p + n < p) return std::string(what) + ": " + hex(p) + " + " + std::to_string(n) + " bytes overflows";
  if (const Allocation* d = overlapping(s.device_allocs, p, n))
    return std::string(what) + ": the host range " + hex(p) + " + " + std::to_string(n) + " bytes is device memory (" +
           d->describe() + ")";
  if (const Allocation* h = overlapping(s.host_allocs, p, n)) {
    if (p < h->base || p + n > h->base + h->size)
      return std::string(what) + ": the host range " + hex(p) + " + " + std::to_string(n) +
             " bytes runs outside " + h->describe();
    *pinned = true;
  }
  return "";
}

// ---- streams and the work queue -------------------------------------------------------------------------
std::shared_ptr<Stream> new_stream(State& s, Context* c, Stream::Kind kind, unsigned flags) {
  auto st = std::make_shared<Stream>();
  st->kind = kind;
  st->flags = flags;
  st->ctx = c;
  st->serial = s.next_serial++;
  c->streams.push_back(st);
  return st;
}

// The stream `h` names in context c: NULL and CU_STREAM_LEGACY are the legacy default stream,
// CU_STREAM_PER_THREAD this thread's default stream, anything else a handle from cuStreamCreate.
CUresult resolve_stream(Api& a, Context* c, CUstream h, std::shared_ptr<Stream>* out) {
  if (h == nullptr || h == STANDIN_STREAM_LEGACY) {
    *out = c->legacy;
    return CUDA_SUCCESS;
  }
  if (h == STANDIN_STREAM_PER_THREAD) {
    auto& st = c->per_thread[std::this_thread::get_id()];
    if (!st) st = new_stream(a.s, c, Stream::PER_THREAD, 0);
    *out = st;
    return CUDA_SUCCESS;
  }
  auto it = a.s.streams.find(h);
  if (it == a.s.streams.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "stream handle " + hex(reinterpret_cast<uint64_t>(h)) +
                                                 " is not a live stream (never created, or destroyed)");
  if (it->second->ctx != c)
    return a.fail(CUDA_ERROR_INVALID_HANDLE,
                  it->second->name() + " belongs to " + it->second->ctx->name() + ", not to the current context");
  *out = it->second;
  return CUDA_SUCCESS;
}

// Queues `run` on `st` after everything already queued there; work on the legacy stream also waits for
// every blocking stream, and work on a blocking stream for the legacy stream. Returns its sequence number.
uint64_t enqueue(State& s, const std::shared_ptr<Stream>& st, std::string what, std::function<std::string()> run,
                 std::vector<Dep> deps = {}) {
  Work w;
  w.seq = s.next_seq++;
  w.what = std::move(what);
  w.run = std::move(run);
  w.deps = std::move(deps);
  Context* c = st->ctx;
  if (st->kind == Stream::LEGACY) {
    for (const auto& o : c->streams)
      if (o != st && o->blocking() && !o->queue.empty()) w.deps.push_back({o, o->last_seq});
  } else if (st->blocking() && !c->legacy->queue.empty()) {
    w.deps.push_back({c->legacy, c->legacy->last_seq});
  }
  st->last_seq = w.seq;
  const uint64_t seq = w.seq;
  st->queue.push_back(std::move(w));
  return seq;
}

// Runs the work queued on `st` with sequence numbers up to `upto`, each after what it waits for. A failure
// makes the context sticky; a failed context discards what is left (a GPU runs nothing more in it).
void run_until(State& s, const char* call, Stream& st, uint64_t upto) {
  while (!st.queue.empty() && st.queue.front().seq <= upto) {
    Work w = std::move(st.queue.front());
    st.queue.pop_front();
    for (const Dep& d : w.deps) run_until(s, call, *d.stream, d.seq);
    Context* c = st.ctx;
    if (c->sticky != CUDA_SUCCESS) continue;
    install_fault_handler(s);
    t_running = w.what.c_str();
    std::string err = w.run();
    t_running = nullptr;
    if (!err.empty())
      make_sticky(s, c, CUDA_ERROR_LAUNCH_FAILED,
                  std::string(call) + ": " + w.what + " failed: " + err + " [" +
                      error_name(CUDA_ERROR_LAUNCH_FAILED) + "]");
  }
}

// Drops streams that were destroyed and have nothing left to run.
void collect_streams(Context* c) {
  auto& v = c->streams;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [](const std::shared_ptr<Stream>& st) { return st->destroyed && st->queue.empty(); }),
          v.end());
}

// Runs everything queued in context c; returns its sticky error (CUDA_SUCCESS if none).
CUresult sync_context(Api& a, Context* c) {
  std::vector<std::shared_ptr<Stream>> all = c->streams;
  for (const auto& st : all) run_until(a.s, a.name, *st, st->last_seq);
  collect_streams(c);
  return c->sticky;
}

CUresult sync_stream(Api& a, const std::shared_ptr<Stream>& st, uint64_t upto) {
  run_until(a.s, a.name, *st, upto);
  return st->ctx->sticky;
}

// The result of a call that ran queued work: the sticky error (as this thread's last error), or success.
CUresult after_run(Api& a, Context* c) {
  if (c->sticky == CUDA_SUCCESS) return CUDA_SUCCESS;
  if (t_last_error != c->sticky_msg) a.sticky(c);  // unless this very call failed it
  return c->sticky;
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

uint64_t parse_bytes(const char* s, uint64_t fallback) {
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 10);
  uint64_t mult = 1;
  if (end != nullptr && *end != '\0') {
    switch (*end) {
      case 'k': case 'K': mult = 1ull << 10; break;
      case 'm': case 'M': mult = 1ull << 20; break;
      case 'g': case 'G': mult = 1ull << 30; break;
      case 't': case 'T': mult = 1ull << 40; break;
      default: return fallback;
    }
  }
  return v == 0 ? fallback : v * mult;
}

// ---- copies and memsets ---------------------------------------------------------------------------------
enum class CopyKind { HtoD, DtoH, DtoD };

// Queues (and for host-blocking cases runs) one copy. `h` is the stream for async copies (nullptr with
// `sync` for the blocking variants, which go to the legacy stream and return when done).
CUresult copy(Api& a, CopyKind kind, uint64_t dst, uint64_t src, size_t n, CUstream h, bool sync) {
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, sync ? nullptr : h, &st)) return r;
  if (n == 0) return CUDA_SUCCESS;
  bool pinned = false;
  std::string why;
  switch (kind) {
    case CopyKind::HtoD:
      why = check_device_range(a.s, c, dst, n, "destination");
      if (why.empty()) why = check_host_range(a.s, src, n, "source", &pinned);
      break;
    case CopyKind::DtoH:
      why = check_device_range(a.s, c, src, n, "source");
      if (why.empty()) why = check_host_range(a.s, dst, n, "destination", &pinned);
      break;
    case CopyKind::DtoD:
      why = check_device_range(a.s, c, src, n, "source");
      if (why.empty()) why = check_device_range(a.s, c, dst, n, "destination");
      break;
  }
  if (!why.empty()) return a.fail(CUDA_ERROR_INVALID_VALUE, why);

  void* d = reinterpret_cast<void*>(dst);
  const void* sp = reinterpret_cast<const void*>(src);
  std::function<std::string()> run;
  bool drain = sync;
  if (kind == CopyKind::HtoD && !pinned && !sync) {
    // From pageable memory the driver stages the source before returning: the caller may reuse it.
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(sp),
                                                               static_cast<const unsigned char*>(sp) + n);
    run = [d, staged] {
      std::memcpy(d, staged->data(), staged->size());
      return std::string();
    };
  } else {
    run = [d, sp, n] {
      std::memmove(d, sp, n);
      return std::string();
    };
  }
  if (kind == CopyKind::DtoH && !sync) {
    if (pinned)
      std::memset(d, 0xff, n);  // not written until the stream runs: a read before a synchronization sees NaN
    else
      drain = true;  // into pageable memory the call returns only when the copy is done
  }
  const uint64_t seq = enqueue(a.s, st, a.where() + " (" + std::to_string(n) + " bytes)", std::move(run));
  if (!drain) return CUDA_SUCCESS;
  sync_stream(a, st, seq);
  return after_run(a, c);
}

CUresult fill(Api& a, uint64_t dst, unsigned value, size_t count, unsigned width, CUstream h, bool sync) {
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, sync ? nullptr : h, &st)) return r;
  if (count == 0) return CUDA_SUCCESS;
  if (dst % width != 0)
    return a.fail(CUDA_ERROR_INVALID_VALUE, hex(dst) + " is not aligned to " + std::to_string(width) + " bytes");
  if (count > UINT64_MAX / width) return a.fail(CUDA_ERROR_INVALID_VALUE, "count overflows");
  const uint64_t n = count * width;
  std::string why = check_device_range(a.s, c, dst, n, "destination");
  if (!why.empty()) return a.fail(CUDA_ERROR_INVALID_VALUE, why);
  void* d = reinterpret_cast<void*>(dst);
  enqueue(a.s, st, a.where() + " (" + std::to_string(n) + " bytes)", [d, value, count, width] {
    if (width == 1) {
      std::memset(d, static_cast<int>(value & 0xff), count);
    } else {
      uint32_t* p = static_cast<uint32_t*>(d);
      for (size_t i = 0; i < count; ++i) p[i] = value;
    }
    return std::string();
  });
  return CUDA_SUCCESS;
}

// ---- launches -------------------------------------------------------------------------------------------
struct LaunchWork {
  const EmuKernel* kernel;
  EmuLaunchCfg cfg;
  std::vector<std::vector<unsigned char>> params;
};

std::string run_launch(const LaunchWork& w) {
  std::vector<EmuArg> args;
  args.reserve(w.params.size());
  for (const auto& p : w.params)
    args.push_back({const_cast<unsigned char*>(p.data()), static_cast<uint64_t>(p.size())});
  char err[1024] = {0};
  int rc = w.kernel->launch(&w.cfg, args.data(), args.size(), err, sizeof err);
  if (rc == 0) return "";
  return std::string("the emulator rejected the kernel: ") + err;
}

const EmuKernel* find_kernel(const std::string& name) {
  for (size_t i = 0; i < kEmuKernelCount; ++i)
    if (name == kEmuKernels[i].name) return &kEmuKernels[i];
  return nullptr;
}

}  // namespace

// ==== exported: initialization, devices, contexts ==========================================================
STANDIN_API CUresult cuInit(unsigned int flags) {
  Api a("cuInit");
  if (flags != 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "flags must be 0, got " + std::to_string(flags));
  if (!a.s.initialized) {
    const char* n = std::getenv("ROTADAM_STANDIN_DEVICES");
    if (n != nullptr && *n != '\0') a.s.device_count = std::max(0, std::atoi(n));
    a.s.total_mem = parse_bytes(std::getenv("ROTADAM_STANDIN_TOTAL_MEM"), kDefaultTotalMem);
    for (int d = 0; d < a.s.device_count; ++d) {
      a.s.contexts.push_back(std::make_unique<Context>());
      a.s.contexts.back()->device = d;
    }
    a.s.initialized = true;
  }
  if (a.s.device_count == 0) return a.fail(CUDA_ERROR_NO_DEVICE, "ROTADAM_STANDIN_DEVICES=0: no device");
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuDeviceGetCount(int* count) {
  Api a("cuDeviceGetCount");
  if (!a.s.initialized) return a.fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
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
  if (!a.s.initialized) return a.fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
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
  if (!a.s.initialized) return a.fail(CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called");
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

// ==== exported: memory =====================================================================================
STANDIN_API CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  Api a("cuMemAlloc_v2");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (dptr == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "dptr is NULL");
  if (bytesize == 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "a zero-byte allocation (the driver rejects bytesize 0)");
  if (bytesize > a.s.total_mem - std::min(a.s.used_bytes, a.s.total_mem))
    return a.fail(CUDA_ERROR_OUT_OF_MEMORY, std::to_string(bytesize) + " bytes requested, " +
                                                std::to_string(a.s.total_mem - a.s.used_bytes) + " of " +
                                                std::to_string(a.s.total_mem) + " free");
  Allocation al;
  if (!map_memory(bytesize, &al))
    return a.fail(CUDA_ERROR_OUT_OF_MEMORY, "the host could not map " + std::to_string(bytesize) + " bytes");
  al.serial = a.s.next_serial++;
  al.origin = a.where();
  al.ctx = c;
  a.s.used_bytes += bytesize;
  *dptr = al.base;
  a.s.device_allocs.emplace(al.base, std::move(al));
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuMemFree_v2(CUdeviceptr dptr) {
  Api a("cuMemFree_v2");
  Context* c = nullptr;
  if (CUresult r = current(a, &c, true)) return r;
  if (dptr == 0) return CUDA_SUCCESS;
  auto it = a.s.device_allocs.find(dptr);
  if (it == a.s.device_allocs.end()) {
    const Allocation* in = find(a.s.device_allocs, dptr, 0);
    if (in != nullptr)
      return a.fail(CUDA_ERROR_INVALID_VALUE, hex(dptr) + " is not the start of " + in->describe());
    for (const auto& q : a.s.quarantine)
      if (q.base == dptr && !q.pinned)
        return a.fail(CUDA_ERROR_INVALID_VALUE, "double free of " + q.describe() + ", already freed by " + q.freed_by);
    return a.fail(CUDA_ERROR_INVALID_VALUE, describe_address(a.s, dptr));
  }
  // Implicit synchronization: queued work that may use the memory runs first.
  sync_context(a, it->second.ctx);
  Allocation al = std::move(it->second);
  a.s.device_allocs.erase(it);
  a.s.used_bytes -= al.size;
  quarantine(a.s, std::move(al), a.where());
  return after_run(a, c);
}

CUresult host_alloc(Api& a, void** pp, size_t bytesize, unsigned flags) {
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (pp == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "pp is NULL");
  if ((flags & ~0x7u) != 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "unknown flags " + hex(flags));
  if (bytesize == 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "a zero-byte allocation");
  Allocation al;
  if (!map_memory(bytesize, &al))
    return a.fail(CUDA_ERROR_OUT_OF_MEMORY, "the host could not map " + std::to_string(bytesize) + " bytes");
  al.serial = a.s.next_serial++;
  al.origin = a.where();
  al.ctx = c;
  al.pinned = true;
  *pp = reinterpret_cast<void*>(al.base);
  a.s.host_allocs.emplace(al.base, std::move(al));
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuMemHostAlloc(void** pp, size_t bytesize, unsigned int flags) {
  Api a("cuMemHostAlloc");
  return host_alloc(a, pp, bytesize, flags);
}

STANDIN_API CUresult cuMemAllocHost_v2(void** pp, size_t bytesize) {
  Api a("cuMemAllocHost_v2");
  return host_alloc(a, pp, bytesize, 0);
}

STANDIN_API CUresult cuMemFreeHost(void* p) {
  Api a("cuMemFreeHost");
  Context* c = nullptr;
  if (CUresult r = current(a, &c, true)) return r;
  const uint64_t v = reinterpret_cast<uint64_t>(p);
  auto it = a.s.host_allocs.find(v);
  if (it == a.s.host_allocs.end()) {
    for (const auto& q : a.s.quarantine)
      if (q.base == v && q.pinned)
        return a.fail(CUDA_ERROR_INVALID_VALUE, "double free of " + q.describe() + ", already freed by " + q.freed_by);
    return a.fail(CUDA_ERROR_INVALID_VALUE, hex(v) + " is not the start of a pinned host allocation");
  }
  sync_context(a, it->second.ctx);  // queued copies may still read or write it
  Allocation al = std::move(it->second);
  a.s.host_allocs.erase(it);
  quarantine(a.s, std::move(al), a.where());
  return after_run(a, c);
}

STANDIN_API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char uc, size_t n) {
  Api a("cuMemsetD8_v2");
  return fill(a, dst, uc, n, 1, nullptr, true);
}
STANDIN_API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char uc, size_t n, CUstream h) {
  Api a("cuMemsetD8Async");
  return fill(a, dst, uc, n, 1, h, false);
}
STANDIN_API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int ui, size_t n) {
  Api a("cuMemsetD32_v2");
  return fill(a, dst, ui, n, 4, nullptr, true);
}
STANDIN_API CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int ui, size_t n, CUstream h) {
  Api a("cuMemsetD32Async");
  return fill(a, dst, ui, n, 4, h, false);
}

STANDIN_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  Api a("cuMemcpyHtoD_v2");
  return copy(a, CopyKind::HtoD, dst, reinterpret_cast<uint64_t>(src), n, nullptr, true);
}
STANDIN_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream h) {
  Api a("cuMemcpyHtoDAsync_v2");
  return copy(a, CopyKind::HtoD, dst, reinterpret_cast<uint64_t>(src), n, h, false);
}
STANDIN_API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  Api a("cuMemcpyDtoH_v2");
  return copy(a, CopyKind::DtoH, reinterpret_cast<uint64_t>(dst), src, n, nullptr, true);
}
STANDIN_API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream h) {
  Api a("cuMemcpyDtoHAsync_v2");
  return copy(a, CopyKind::DtoH, reinterpret_cast<uint64_t>(dst), src, n, h, false);
}
STANDIN_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  Api a("cuMemcpyDtoD_v2");
  // Device to device: asynchronous with respect to the host even in its "synchronous" form.
  return copy(a, CopyKind::DtoD, dst, src, n, nullptr, false);
}
STANDIN_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream h) {
  Api a("cuMemcpyDtoDAsync_v2");
  return copy(a, CopyKind::DtoD, dst, src, n, h, false);
}

// ==== exported: streams and events ========================================================================
STANDIN_API CUresult cuStreamCreate(CUstream* ph, unsigned int flags) {
  Api a("cuStreamCreate");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (ph == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "phStream is NULL");
  if ((flags & ~1u) != 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "unknown flags " + hex(flags));
  auto st = new_stream(a.s, c, Stream::CREATED, flags);
  CUstream h = reinterpret_cast<CUstream>(st.get());
  a.s.streams[h] = st;
  *ph = h;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuStreamDestroy_v2(CUstream h) {
  Api a("cuStreamDestroy_v2");
  Context* c = nullptr;
  if (CUresult r = current(a, &c, true)) return r;
  if (h == nullptr || h == STANDIN_STREAM_LEGACY || h == STANDIN_STREAM_PER_THREAD)
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "a default stream cannot be destroyed");
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, h, &st)) return r;
  st->destroyed = true;  // its queued work still runs (when synchronized or waited for)
  a.s.streams.erase(h);
  collect_streams(c);
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuStreamSynchronize(CUstream h) {
  Api a("cuStreamSynchronize");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, h, &st)) return r;
  sync_stream(a, st, st->last_seq);
  return after_run(a, c);
}

STANDIN_API CUresult cuStreamQuery(CUstream h) {
  Api a("cuStreamQuery");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, h, &st)) return r;
  sync_stream(a, st, st->last_seq);  // the stand-in finishes what is asked about
  return after_run(a, c);
}

STANDIN_API CUresult cuStreamWaitEvent(CUstream h, CUevent e, unsigned int flags) {
  Api a("cuStreamWaitEvent");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, h, &st)) return r;
  if (flags > 1) return a.fail(CUDA_ERROR_INVALID_VALUE, "unknown flags " + hex(flags));
  auto it = a.s.events.find(e);
  if (it == a.s.events.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "event " + hex(reinterpret_cast<uint64_t>(e)) + " is not live");
  const Event& ev = *it->second;
  if (!ev.recorded) return CUDA_SUCCESS;  // waiting for an event never recorded waits for nothing
  std::vector<Dep> deps{{ev.stream, ev.seq}};
  enqueue(a.s, st, a.where() + " (wait for event #" + std::to_string(ev.serial) + ")", [] { return std::string(); },
          std::move(deps));
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuEventCreate(CUevent* ph, unsigned int flags) {
  Api a("cuEventCreate");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (ph == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "phEvent is NULL");
  if ((flags & ~0x7u) != 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "unknown flags " + hex(flags));
  if ((flags & 0x4u) != 0 && (flags & 0x2u) == 0)
    return a.fail(CUDA_ERROR_INVALID_VALUE, "CU_EVENT_INTERPROCESS requires CU_EVENT_DISABLE_TIMING");
  auto ev = std::make_shared<Event>();
  ev->serial = a.s.next_serial++;
  ev->ctx = c;
  ev->flags = flags;
  CUevent h = reinterpret_cast<CUevent>(ev.get());
  a.s.events[h] = ev;
  *ph = h;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuEventRecord(CUevent e, CUstream h) {
  Api a("cuEventRecord");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  auto it = a.s.events.find(e);
  if (it == a.s.events.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "event " + hex(reinterpret_cast<uint64_t>(e)) + " is not live");
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, h, &st)) return r;
  std::shared_ptr<Event> ev = it->second;
  if (ev->ctx != c)
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "event #" + std::to_string(ev->serial) + " belongs to another context");
  const uint64_t gen = ++ev->generation;
  ev->recorded = true;
  ev->stamped = false;
  ev->stream = st;
  ev->seq = enqueue(a.s, st, a.where() + " (event #" + std::to_string(ev->serial) + ")", [ev, gen] {
    if (ev->generation == gen) {
      ev->stamped = true;
      const auto now = std::chrono::steady_clock::now().time_since_epoch();
      ev->time_ms = std::chrono::duration<double, std::milli>(now).count();
    }
    return std::string();
  });
  return CUDA_SUCCESS;
}

namespace {
CUresult event_of(Api& a, CUevent e, std::shared_ptr<Event>* out) {
  auto it = a.s.events.find(e);
  if (it == a.s.events.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "event " + hex(reinterpret_cast<uint64_t>(e)) + " is not live");
  *out = it->second;
  return CUDA_SUCCESS;
}
bool event_done(const Event& ev) {
  return !ev.recorded || ev.stream->queue.empty() || ev.stream->queue.front().seq > ev.seq;
}
}  // namespace

STANDIN_API CUresult cuEventSynchronize(CUevent e) {
  Api a("cuEventSynchronize");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Event> ev;
  if (CUresult r = event_of(a, e, &ev)) return r;
  if (ev->recorded) sync_stream(a, ev->stream, ev->seq);
  return after_run(a, ev->ctx);
}

STANDIN_API CUresult cuEventQuery(CUevent e) {
  Api a("cuEventQuery");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  std::shared_ptr<Event> ev;
  if (CUresult r = event_of(a, e, &ev)) return r;
  if (ev->recorded) sync_stream(a, ev->stream, ev->seq);  // the stand-in finishes what is asked about
  return after_run(a, ev->ctx);
}

STANDIN_API CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
  Api a("cuEventElapsedTime");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (ms == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "pMilliseconds is NULL");
  std::shared_ptr<Event> s0, s1;
  if (CUresult r = event_of(a, start, &s0)) return r;
  if (CUresult r = event_of(a, end, &s1)) return r;
  for (const auto* ev : {s0.get(), s1.get()}) {
    if ((ev->flags & 0x2u) != 0)
      return a.fail(CUDA_ERROR_INVALID_HANDLE,
                    "event #" + std::to_string(ev->serial) + " was created with CU_EVENT_DISABLE_TIMING");
    if (!ev->recorded)
      return a.fail(CUDA_ERROR_INVALID_HANDLE, "event #" + std::to_string(ev->serial) + " was never recorded");
  }
  if (!event_done(*s0) || !event_done(*s1) || !s0->stamped || !s1->stamped) return CUDA_ERROR_NOT_READY;
  *ms = static_cast<float>(s1->time_ms - s0->time_ms);
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuEventDestroy_v2(CUevent e) {
  Api a("cuEventDestroy_v2");
  Context* c = nullptr;
  if (CUresult r = current(a, &c, true)) return r;
  std::shared_ptr<Event> ev;
  if (CUresult r = event_of(a, e, &ev)) return r;
  a.s.events.erase(e);  // a pending record still completes; nothing can wait for it any more
  return CUDA_SUCCESS;
}

// ==== exported: modules and launches =======================================================================
STANDIN_API CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  Api a("cuModuleLoadData");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (module == nullptr || image == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "module or image is NULL");
  const unsigned char* b = static_cast<const unsigned char*>(image);
  if (b[0] == 0x7f && b[1] == 'E' && b[2] == 'L' && b[3] == 'F')
    return a.fail(CUDA_ERROR_NOT_SUPPORTED, "a cubin (ELF) image: the stand-in only loads PTX text");
  if (b[0] == 0x50 && b[1] == 0xed && b[2] == 0x55 && b[3] == 0xba)
    return a.fail(CUDA_ERROR_NOT_SUPPORTED, "a fatbin image: the stand-in only loads PTX text");
  auto m = std::make_unique<Module>();
  std::string err;
  if (!parse_ptx(static_cast<const char*>(image), &m->ptx, &err)) return a.fail(CUDA_ERROR_INVALID_PTX, err);
  const PtxModule& p = m->ptx;
  if (p.version_major > kMaxPtxMajor || (p.version_major == kMaxPtxMajor && p.version_minor > kMaxPtxMinor))
    return a.fail(CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
                  "PTX ISA " + std::to_string(p.version_major) + "." + std::to_string(p.version_minor) +
                      " is newer than this driver reads (" + std::to_string(kMaxPtxMajor) + "." +
                      std::to_string(kMaxPtxMinor) + ", CUDA 12.9)");
  if (p.target_sm > kDeviceSm)
    return a.fail(CUDA_ERROR_INVALID_PTX, "PTX for .target " + p.target + " cannot be compiled for the sm_90 device");
  if (p.address_size != 64) return a.fail(CUDA_ERROR_INVALID_PTX, ".address_size " + std::to_string(p.address_size));
  m->serial = a.s.next_serial++;
  m->ctx = c;
  CUmodule h = reinterpret_cast<CUmodule>(m.get());
  a.s.modules[h] = std::move(m);
  *module = h;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  Api a("cuModuleGetFunction");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (hfunc == nullptr || name == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "hfunc or name is NULL");
  auto mit = a.s.modules.find(hmod);
  if (mit == a.s.modules.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "module " + hex(reinterpret_cast<uint64_t>(hmod)) + " is not loaded");
  Module& m = *mit->second;
  auto fit = m.functions.find(name);
  if (fit != m.functions.end()) {
    *hfunc = reinterpret_cast<CUfunction>(fit->second.get());
    return CUDA_SUCCESS;
  }
  const PtxEntry* entry = nullptr;
  std::string names;
  for (const auto& e : m.ptx.entries) {
    if (e.name == name) entry = &e;
    names += (names.empty() ? "" : ", ") + e.name;
  }
  const std::string fn = std::string(name);
  if (entry == nullptr)
    return a.fail(CUDA_ERROR_NOT_FOUND,
                  "module #" + std::to_string(m.serial) + " has no .entry " + fn + " (it has: " + names + ")");
  const EmuKernel* k = find_kernel(fn);
  if (k == nullptr)
    return a.fail(CUDA_ERROR_NOT_FOUND,
                  "the emulator has no kernel " + fn + " (an extern \"C\" __global__ in kernels/*.cu)");
  uint64_t sizes[64], aligns[64];
  unsigned char ptr[64];
  const uint64_t n = k->params(sizes, aligns, ptr, 64);
  if (n != entry->params.size() || n > 64)
    return a.fail(CUDA_ERROR_NOT_FOUND, fn + ": the PTX entry has " + std::to_string(entry->params.size()) +
                                            " parameters, the emulator's C++ kernel (kernels/" + k->module + ".cu) " +
                                            std::to_string(n));
  auto f = std::make_unique<Function>();
  for (uint64_t i = 0; i < n; ++i) {
    const PtxParam& p = entry->params[i];
    if (p.size != sizes[i] || (p.array && p.align != aligns[i]))
      return a.fail(CUDA_ERROR_NOT_FOUND,
                    fn + ": parameter " + std::to_string(i) + " is " + std::to_string(p.size) + " bytes (" + p.type +
                        (p.array ? " array, .align " + std::to_string(p.align) : "") + ") in the PTX but " +
                        std::to_string(sizes[i]) + " bytes (alignment " + std::to_string(aligns[i]) +
                        ") in the emulator's C++ kernel (kernels/" + k->module + ".cu)");
    f->is_pointer.push_back(ptr[i]);
  }
  f->module = &m;
  f->kernel = k;
  f->entry = *entry;
  CUfunction h = reinterpret_cast<CUfunction>(f.get());
  a.s.functions[h] = f.get();
  m.functions[fn] = std::move(f);
  *hfunc = h;
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuModuleUnload(CUmodule hmod) {
  Api a("cuModuleUnload");
  Context* c = nullptr;
  if (CUresult r = current(a, &c, true)) return r;
  auto it = a.s.modules.find(hmod);
  if (it == a.s.modules.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE, "module " + hex(reinterpret_cast<uint64_t>(hmod)) + " is not loaded");
  for (auto& f : it->second->functions) a.s.functions.erase(reinterpret_cast<CUfunction>(f.second.get()));
  a.s.modules.erase(it);  // queued launches keep what they need (kernel, arguments)
  return CUDA_SUCCESS;
}

STANDIN_API CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int smem, CUstream h, void** params,
                                    void** extra) {
  Api a("cuLaunchKernel");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  auto fit = a.s.functions.find(f);
  if (fit == a.s.functions.end())
    return a.fail(CUDA_ERROR_INVALID_HANDLE,
                  "function " + hex(reinterpret_cast<uint64_t>(f)) +
                      " is not live (never returned by cuModuleGetFunction, or its module was unloaded)");
  const Function& fn = *fit->second;
  const std::string kname = fn.entry.name;
  auto fail = [&](CUresult code, const std::string& msg) { return a.fail(code, kname + ": " + msg); };
  if (fn.module->ctx != c) return fail(CUDA_ERROR_INVALID_HANDLE, "the function was loaded in another context");
  std::shared_ptr<Stream> st;
  if (CUresult r = resolve_stream(a, c, h, &st)) return r;
  const std::string geo = "grid (" + std::to_string(gx) + "," + std::to_string(gy) + "," + std::to_string(gz) +
                          "), block (" + std::to_string(bx) + "," + std::to_string(by) + "," + std::to_string(bz) + ")";
  if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0)
    return fail(CUDA_ERROR_INVALID_VALUE, geo + ": a dimension is 0");
  if (gx > 2147483647u || gy > 65535u || gz > 65535u)
    return fail(CUDA_ERROR_INVALID_VALUE, geo + ": the grid exceeds sm_90's 2^31-1 x 65535 x 65535");
  const uint64_t threads = static_cast<uint64_t>(bx) * by * bz;
  if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024)
    return fail(CUDA_ERROR_INVALID_VALUE, geo + ": the block exceeds 1024 threads or 1024 x 1024 x 64");
  const unsigned* mx = fn.entry.maxntid;
  if (mx[0] != 0 && threads > static_cast<uint64_t>(mx[0]) * mx[1] * mx[2])
    return fail(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                geo + ": " + std::to_string(threads) +
                    " threads, more than the kernel's .maxntid (__launch_bounds__) of " +
                    std::to_string(static_cast<uint64_t>(mx[0]) * mx[1] * mx[2]));
  const unsigned* rq = fn.entry.reqntid;
  if (rq[0] != 0 && (bx != rq[0] || by != rq[1] || bz != rq[2]))
    return fail(CUDA_ERROR_INVALID_VALUE, geo + ": the kernel requires a block of (" + std::to_string(rq[0]) + "," +
                                              std::to_string(rq[1]) + "," + std::to_string(rq[2]) + ") (.reqntid)");
  if (smem > kMaxDynamicSmem)
    return fail(CUDA_ERROR_INVALID_VALUE, std::to_string(smem) + " bytes of dynamic shared memory, more than 48 KiB");
  if (extra != nullptr)
    return fail(CUDA_ERROR_NOT_SUPPORTED,
                "`extra` launch parameters are not implemented by the stand-in (pass kernelParams)");
  const size_t np = fn.entry.params.size();
  if (np > 0 && params == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "kernelParams is NULL");

  auto w = std::make_shared<LaunchWork>();
  w->kernel = fn.kernel;
  w->cfg = EmuLaunchCfg{{gx, gy, gz}, {bx, by, bz}, smem, 0};
  w->params.resize(np);
  for (size_t i = 0; i < np; ++i) {
    const PtxParam& p = fn.entry.params[i];
    if (params[i] == nullptr) return fail(CUDA_ERROR_INVALID_VALUE, "kernelParams[" + std::to_string(i) + "] is NULL");
    const unsigned char* v = static_cast<const unsigned char*>(params[i]);
    w->params[i].assign(v, v + p.size);
  }
  // Pointer arguments: a GPU would fault when the kernel dereferences a bad one (CUDA_ERROR_ILLEGAL_ADDRESS at
  // the next synchronization, sticky); the stand-in reports it here, naming the parameter.
  for (size_t i = 0; i < np; ++i) {
    if (!fn.is_pointer[i]) continue;
    uint64_t p = 0;
    std::memcpy(&p, w->params[i].data(), sizeof p);
    if (p == 0) continue;
    const Allocation* dev = find(a.s.device_allocs, p, 0);
    std::string where;
    if (dev != nullptr && dev->ctx == c) continue;
    if (dev != nullptr)
      where = dev->describe() + " belongs to " + dev->ctx->name() + ", not to the current " + c->name();
    else if (find(a.s.host_allocs, p, 0) != nullptr)
      continue;  // pinned host memory is addressable from kernels (unified addressing)
    else
      where = describe_address(a.s, p);
    const std::string line = std::string(a.name) + ": " + kname + ": parameter " + std::to_string(i) +
                             " (a pointer) = " + where + " [" + error_name(CUDA_ERROR_ILLEGAL_ADDRESS) + "]";
    make_sticky(a.s, c, CUDA_ERROR_ILLEGAL_ADDRESS, line);
    return CUDA_ERROR_ILLEGAL_ADDRESS;
  }
  enqueue(a.s, st, "kernel " + kname + " (" + a.where() + ", " + geo + ")", [w] { return run_launch(*w); });
  return CUDA_SUCCESS;
}

// ==== exported: observability and the interface for libcublas.so ===========================================
STANDIN_API int rotadam_standin_errors(char* buf, uint64_t len) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  s.report_text.clear();
  for (size_t i = 0; i < s.report.size(); ++i) {
    s.report_text += s.report[i];
    if (s.report_counts[i] > 1) s.report_text += " (x" + std::to_string(s.report_counts[i]) + ")";
    s.report_text += '\n';
  }
  if (s.unlisted > 0) s.report_text += "(" + std::to_string(s.unlisted) + " more errors not listed)\n";
  if (buf != nullptr && len > 0) {
    const size_t n = std::min<uint64_t>(s.report_text.size(), len - 1);
    std::memcpy(buf, s.report_text.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int>(std::min<uint64_t>(s.error_count, INT32_MAX));
}

STANDIN_API void rotadam_standin_clear_errors(void) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  s.report.clear();
  s.report_counts.clear();
  s.report_index.clear();
  s.error_count = 0;
  s.unlisted = 0;
}

STANDIN_API const char* rotadam_standin_last_error(void) { return t_last_error.c_str(); }

STANDIN_API const char* rotadam_standin_entry_points(void) { return kEntryPoints; }

STANDIN_API unsigned int rotadam_standin_check_device_range(uint64_t ptr, uint64_t bytes, const char* what, char* why,
                                                            uint64_t why_len) {
  Api a(what);
  a.quiet = true;
  Context* c = nullptr;
  CUresult r = current(a, &c, true);
  if (r == CUDA_SUCCESS) {
    a.message = check_device_range(a.s, c, ptr, bytes, what);
    if (!a.message.empty()) r = CUDA_ERROR_ILLEGAL_ADDRESS;
  }
  if (r != CUDA_SUCCESS && why != nullptr && why_len > 0) std::snprintf(why, why_len, "%s", a.message.c_str());
  return r;
}

STANDIN_API unsigned int rotadam_standin_check_stream(CUstream stream, char* why, uint64_t why_len) {
  Api a("stream check");
  a.quiet = true;
  Context* c = nullptr;
  CUresult r = current(a, &c, true);
  std::shared_ptr<Stream> st;
  if (r == CUDA_SUCCESS) r = resolve_stream(a, c, stream, &st);
  if (r != CUDA_SUCCESS && why != nullptr && why_len > 0) std::snprintf(why, why_len, "%s", a.message.c_str());
  return r;
}

STANDIN_API unsigned int rotadam_standin_enqueue(CUstream stream, const char* what, rotadam_standin_work_fn run,
                                                 void (*release)(void*), void* payload, char* why, uint64_t why_len) {
  std::shared_ptr<void> owned(payload, [release](void* p) {
    if (release != nullptr) release(p);
  });
  Api a(what);
  Context* c = nullptr;
  CUresult r = current(a, &c);
  std::shared_ptr<Stream> st;
  if (r == CUDA_SUCCESS) r = resolve_stream(a, c, stream, &st);
  if (r != CUDA_SUCCESS) {
    if (why != nullptr && why_len > 0) std::snprintf(why, why_len, "%s", a.message.c_str());
    return r;
  }
  enqueue(a.s, st, a.where(), [owned, run] {
    char err[1024] = {0};
    if (run(owned.get(), err, sizeof err) == 0) return std::string();
    return std::string(err[0] != '\0' ? err : "failed");
  });
  return CUDA_SUCCESS;
}

STANDIN_API void rotadam_standin_report(const char* message) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  record(s, message);
}

STANDIN_API void rotadam_standin_fault(unsigned int code, const char* message) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  make_sticky(s, t_current, static_cast<CUresult>(code), message);
}
