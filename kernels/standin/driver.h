// driver.h: what the pieces of the CUDA driver stand-in (libcuda.so) share, private to the library: its
// limits, its state (allocations, streams and their queued work, events, modules, contexts), the call helper
// every entry point starts with, the error helpers and the functions one piece calls in another. The pieces:
//   - context.cpp: cuInit, devices and their attributes, primary contexts, the current context, error names
//     and strings;
//   - memory.cpp: device and pinned host allocations, guard pages, the quarantine, the fault handler, copies
//     and memsets;
//   - streams.cpp: streams, events, the work queue (with collectives that wait for their peers: libnccl.so.2,
//     nccl.cpp) and synchronization;
//   - modules.cpp: modules from PTX, function lookup and cuLaunchKernel;
//   - report.cpp: the state, the error report and the exported rotadam_standin_* functions (observability and
//     the interface for libcublas.so and libnccl.so.2).
// Everything here lives in namespace rotadam_standin with hidden visibility; the library exports only the
// STANDIN_API functions (standin.h, libcuda.map).
//
// The driver stand-in is a stand-in for the CUDA driver API (libcuda.so), enough for cudarc 0.19 to run the
// project's CUDA backend on a machine without a GPU, with the kernels executed by the CPU emulator.
//
// What it models:
//   - one or more devices (ROTADAM_STANDIN_DEVICES, default 1) that claim to be sm_90 GPUs with
//     ROTADAM_STANDIN_TOTAL_MEM bytes each (default 80G), each with a refcounted primary context; the current
//     context is per thread. cuInit reads both settings strictly: a malformed or overflowing value fails it
//     with CUDA_ERROR_INVALID_VALUE, naming the variable and what is expected (later calls fail with
//     CUDA_ERROR_NOT_INITIALIZED and the same reason);
//   - device memory: every cuMemAlloc_v2 is its own mapping of host memory (device pointers are host
//     pointers), 256-byte aligned, ending at a PROT_NONE guard page, filled with 0xFF bytes (NaN as
//     floats). A free makes the whole mapping PROT_NONE and keeps it in a bounded quarantine, so a freed
//     address is not handed out again soon and a kernel touching it faults instead of reading stale data;
//   - streams, events and the legacy default stream's implicit synchronization: work (launches, copies,
//     memsets, cuBLAS calls) is queued per stream and runs only where a GPU would guarantee completion to the
//     host: stream, event and context synchronization, blocking copies, copies into pageable memory,
//     cuMemFree_v2 / cuMemFreeHost, and queries (cuStreamQuery / cuEventQuery run what they ask about and
//     report it done). A stream waiting on an event runs that event's work when the waiting stream is run.
//     An NCCL collective (libnccl.so.2) that runs before its peers have reached it is "not ready": it stays
//     queued, the other streams' collectives run, and the synchronizing call waits with the lock released
//     (the functions that run queued work, below).
//     A device-to-host copy into pinned memory fills its destination with 0xFF when queued (a host read
//     before the synchronization sees NaN), after running the queued copies that still read or write those
//     bytes, with what precedes them (run_host_users);
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
#pragma once

#include "standin.h"

#include <signal.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace rotadam_standin __attribute__((visibility("hidden"))) {

constexpr uint64_t kAllocAlign = 256;                        // cuMemAlloc's alignment guarantee
constexpr uint64_t kDefaultTotalMem = 80ull << 30;           // an 80 GiB H100
constexpr uint64_t kMaxDevices = 64;                         // ROTADAM_STANDIN_DEVICES' bound: more than a node has
constexpr size_t kQuarantineEntries = 4096;                  // freed mappings kept PROT_NONE …
constexpr uint64_t kQuarantineBytes = 256ull << 30;          // … up to this much address space
constexpr unsigned kMaxDynamicSmem = 48 * 1024;              // without cuFuncSetAttribute (not exported)
constexpr int kMaxPtxMajor = 8, kMaxPtxMinor = 8;            // a CUDA 12.9 driver reads PTX ISA 8.8
constexpr int kDeviceSm = 90;
constexpr size_t kMaxReportLines = 1000;                     // distinct lines kept; later ones are only counted
constexpr std::chrono::microseconds kNotReadyPoll{200};      // how long a not-ready collective's caller waits

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

// Pinned host bytes [begin, end) that queued work reads or writes when it runs; empty (0, 0) for none. A
// device-to-host copy into pinned memory poisons its destination when queued, so it first runs the queued
// work whose range overlaps that destination (run_host_users).
struct HostRange {
  uint64_t begin = 0, end = 0;
  bool overlaps(uint64_t p, uint64_t n) const { return p < end && begin < p + n; }
};

// What running a work item did (the statuses of rotadam_standin_work_fn, standin.h).
constexpr int kWorkDone = 0;      // it ran
constexpr int kWorkFailed = 1;    // it failed: the context fails (sticky) with its message
constexpr int kWorkNotReady = 2;  // it cannot run yet (a collective waiting for its peers): try again later

// One queued operation. `run` returns a kWork* status, with what went wrong in *err when it failed.
struct Work {
  uint64_t seq = 0;  // process-wide enqueue order
  std::string what;  // "cuLaunchKernel(adamw_step), API call #55"
  std::vector<Dep> deps;
  std::function<int(std::string* err)> run;
  HostRange host;           // the pinned host memory it copies from or into (copies only)
  bool collective = false;  // an NCCL collective: may be not ready; run early while another one waits
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
  // Notified when work is queued or a collective completes: a thread waiting for a collective's peers
  // (run_until's kWorkNotReady) waits on it with the mutex released, and polls (peers in other processes
  // notify nobody here).
  std::condition_variable cv;
  bool initialized = false;
  CUresult init_error = CUDA_SUCCESS;  // a failed cuInit (a malformed setting), kept for every later call …
  std::string init_message;            // … with its reason
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

// ---- the state and this thread's view of it (report.cpp) ------------------------------------------------
// The stand-in's one State, created on first use and never destroyed.
State& state();

extern thread_local Context* t_current;
extern thread_local std::string t_last_error;
extern thread_local const char* t_running;  // the work item this thread is running (fault handler)

// ---- errors (error_name: context.cpp; the rest: report.cpp) ---------------------------------------------
// "CUDA_ERROR_…" for the codes the stand-in knows, else nullptr.
const char* error_name(CUresult r);

// v as "0x…", for messages.
std::string hex(uint64_t v);

// Adds one line to the error report (lock held): counted every time, printed to stderr once.
void record(State& s, const std::string& line);

// Fails the current context as a GPU fault would: every later call in it returns `code`.
void make_sticky(State& s, Context* c, CUresult code, const std::string& line);

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
CUresult current(Api& a, Context** out, bool allow_sticky = false);  // context.cpp

// ---- memory (memory.cpp) --------------------------------------------------------------------------------
// Installs, once per process, the SIGSEGV handler that names the work item this thread is running.
void install_fault_handler(State& s);
// The live allocation in `m` containing [p, p + n) (n = 0: p may be one past the end), or nullptr.
const Allocation* find(const std::map<uint64_t, Allocation>& m, uint64_t p, uint64_t n);
// Where `p` points, for a message: into which allocation (live or freed), or nowhere.
std::string describe_address(State& s, uint64_t p);
// "" when [p, p + n) lies inside one live device allocation of context c (n may be 0), else why not.
// `current`: c is the calling thread's current context (the message says so), not one named otherwise.
std::string check_device_range(State& s, Context* c, uint64_t p, uint64_t n, const char* what, bool current = true);

// ---- streams and the work queue (streams.cpp) -----------------------------------------------------------
// A new stream of context c, listed in c->streams.
std::shared_ptr<Stream> new_stream(State& s, Context* c, Stream::Kind kind, unsigned flags);
// The stream `h` names in context c: NULL and CU_STREAM_LEGACY are the legacy default stream,
// CU_STREAM_PER_THREAD this thread's default stream, anything else a handle from cuStreamCreate.
// `current`: c is the calling thread's current context (the message says so), not one named otherwise.
CUresult resolve_stream(Api& a, Context* c, CUstream h, std::shared_ptr<Stream>* out, bool current = true);
// Queues `run` on `st` after everything already queued there; work on the legacy stream also waits for
// every blocking stream, and work on a blocking stream for the legacy stream. `host` is the pinned host
// memory it reads or writes. Returns its sequence number.
uint64_t enqueue(State& s, const std::shared_ptr<Stream>& st, std::string what, std::function<std::string()> run,
                 std::vector<Dep> deps = {}, HostRange host = {});
// The same for a work item that returns a kWork* status: one that may not be ready when first run (an NCCL
// collective, `collective`), which run_until then keeps at the front of its stream and retries.
uint64_t enqueue_status(State& s, const std::shared_ptr<Stream>& st, std::string what,
                        std::function<int(std::string*)> run, bool collective);
//
// Running queued work (the three functions below) may wait: a collective that is not ready yet (its peers
// have not reached it) stays at the front of its stream, the queued collectives of every other stream run
// (with what precedes them on their streams: a schedule a GPU could choose, which lets one thread drive
// several devices' collectives), and if none of that makes progress the call waits on State::cv with the
// lock (a.lock) RELEASED, for at most kNotReadyPoll, and tries again. So another thread may change the state
// meanwhile: a caller that holds iterators, references or pointers into State's containers across these
// calls must look them up again. Without collectives nothing waits and the lock is never released. The
// collective itself bounds the wait: it fails (the context becomes sticky) after its timeout.
//
// Runs, in every active context, the queued work that reads or writes pinned host bytes [p, p + n) (n > 0),
// with what precedes it on its stream and what it waits for: running work before a synchronization asks for
// it is a schedule a GPU could have chosen, and it must read or write those bytes before they are poisoned.
void run_host_users(Api& a, uint64_t p, uint64_t n);
// Runs everything queued in context c; returns its sticky error (CUDA_SUCCESS if none).
CUresult sync_context(Api& a, Context* c);
// Runs the work queued on `st` up to sequence number `upto` (and what it waits for); returns the sticky error
// of st's context.
CUresult sync_stream(Api& a, const std::shared_ptr<Stream>& st, uint64_t upto);
// The same without waiting (queries): false when a collective in the way is not ready yet.
bool try_stream(Api& a, const std::shared_ptr<Stream>& st, uint64_t upto);
// The result of a call that ran queued work: the sticky error (as this thread's last error), or success.
CUresult after_run(Api& a, Context* c);

}  // namespace rotadam_standin
