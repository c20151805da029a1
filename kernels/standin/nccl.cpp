// nccl.cpp: a stand-in for NCCL 2.x (libnccl.so.2, SONAME libnccl.so.2) over the driver stand-in: enough of
// NCCL's C API (its public header's types, values and semantics) for data-parallel training to run without a
// GPU — communicators, all-reduce, broadcast, reduce-scatter, all-gather, group calls, errors.
//
// What it models:
//   - ranks as threads of one process (each driving its own stand-in device) or as processes of one machine:
//     a communicator is one POSIX shared-memory segment, named by ncclGetUniqueId inside the 128-byte id
//     ("/rotadam-nccl-<pid>-<counter>-<random>"). The first rank to initialize creates it and sets nranks (a
//     later rank giving another nranks is refused, naming both); each rank claims its number once (a second
//     claim is refused) and records its process and device; every rank attaches (a refcount: the last
//     ncclCommDestroy unlinks the name). ncclCommInitRank returns once every rank has joined (inside
//     ncclGroupStart/ncclGroupEnd: at ncclGroupEnd), as NCCL's does; two ranks on one device are refused
//     ("Duplicate GPU", as NCCL does), across processes too (they model one machine's GPUs);
//   - stream semantics: a collective is checked when called and queued on its stream like a kernel launch
//     (rotadam_standin_enqueue_on); it runs when that stream's work runs (a synchronization). It then
//     exchanges data with its peers through the segment: one data slot per rank (kSlotBytes, sparse) and,
//     per rank, the number of the last collective it posted and the last it finished reading. Collective k
//     of a rank (numbered in the order the rank queued them) first waits until every rank has finished
//     reading collective k-1, copies its send buffer and a descriptor (kind, count, type, op, root) into its
//     slot and posts k; then waits until every rank has posted k, checks that all descriptors equal rank 0's
//     (a mismatch fails every rank, naming both calls), computes its result from the slots and writes its
//     receive buffer, and marks k read. Waiting never blocks inside the driver: the work item returns
//     ROTADAM_STANDIN_NOT_READY (standin.h) and the driver retries it, running the other streams' queued
//     collectives meanwhile (so one thread can drive several devices' collectives issued in a group) or
//     waiting with its lock released (so the peer threads can run theirs);
//   - reductions in rank order 0, 1, …, nranks-1, the same on every rank: every rank gets the same bits, run
//     after run. Sums of int8/uint8/int32/uint32/int64/uint64 wrap; float32 and float64 round once per
//     operation (no FMA); avg is the sum divided by nranks (integer division for integers); max and min of
//     floats propagate NaN. float16 and bfloat16 are refused for reductions (ncclInvalidArgument);
//     broadcast and all-gather of any type are byte copies;
//   - a timeout: a collective (or an initialization) that waits longer than ROTADAM_STANDIN_NCCL_TIMEOUT
//     seconds (default 120; read strictly: a whole number from 1 to 86400, else the initialization fails)
//     fails, naming the call, the rank and the ranks that never arrived; a peer whose process has exited,
//     or whose queued collective was discarded (its context failed) or failed, fails it at once;
//   - validation when a collective is called, as with NCCL_CHECK_POINTERS=1 (without it a GPU would fault
//     in the kernel instead): the communicator (NULL, unknown, destroyed, aborted), the type and op, the
//     root, the buffers (each inside one live device allocation of the communicator's device for the bytes
//     the call reads or writes; in-place forms allowed — all-reduce and broadcast send == recv, all-gather
//     send == recv + rank*count*size, reduce-scatter recv == send + rank*recvcount*size — other overlaps
//     refused), the stream (one of the communicator's device), one thread issuing collectives of two ranks of
//     one communicator outside a group (NCCL's documentation requires a group there: the first call may
//     block until every rank has made it). Each failure is reported like the driver's (stderr once as
//     "cuda stand-in: …", the report, the thread's last error: rotadam_standin_report) and is this thread's
//     ncclGetLastError, with NCCL's result code;
//   - group calls: ncclGroupStart/ncclGroupEnd nest (per thread); ncclGroupEnd without a start is
//     ncclInvalidUsage; operations in a group queue as they would outside one (queueing never blocks here),
//     initializations complete at the outermost ncclGroupEnd, which returns the first error of the group.
//
// What it cannot check: real NCCL's reduction order (a ring or a tree reduces in another order: results on
// GPUs agree with these to rounding only), its avg (which may scale each input first), NaN handling in max
// and min, bandwidth, topology, NVLink, InfiniBand, and more than one machine. Limits of its own: at most
// kMaxRanks ranks, and at most kSlotBytes posted per rank and call (an all-reduce or all-gather posts its send
// buffer, a reduce-scatter nranks * recvcount elements); /dev/shm must hold what is posted (the pages are
// reserved when a call is queued, so a full /dev/shm is an error there, not a fault later). A process killed
// before it destroys its communicators leaves their segments in /dev/shm.
#include "standin.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// ---- NCCL's ABI (NCCL 2.x's public header: its types and values) ---------------------------------------
struct ncclComm;
typedef struct ncclComm* ncclComm_t;
#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
} ncclResult_t;
typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
} ncclDataType_t;
typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;
typedef CUstream cudaStream_t;

namespace {

constexpr int kVersionCode = 22105;                  // NCCL_VERSION_CODE of 2.21.5: 2 * 10000 + 21 * 100 + 5
constexpr uint64_t kSlotBytes = 1ull << 30;          // posted per rank and call, at most (sparse)
constexpr int kMaxRanks = 256;                       // ranks of one communicator
constexpr uint64_t kDefaultTimeout = 120;            // seconds (ROTADAM_STANDIN_NCCL_TIMEOUT)
constexpr uint64_t kMaxTimeout = 86400;              // a day
constexpr char kTimeoutVar[] = "ROTADAM_STANDIN_NCCL_TIMEOUT";
constexpr char kIdPrefix[] = "/rotadam-nccl-";      // the segment names ncclGetUniqueId makes
constexpr char kMagic[16] = "rotadam-nccl-v1";
constexpr auto kLivenessEvery = std::chrono::milliseconds(20);  // how often a waiter looks for dead peers

using Clock = std::chrono::steady_clock;

static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free &&
                  std::atomic<int32_t>::is_always_lock_free,
              "the shared segment's atomics must be lock-free (address-free) to work across processes");

const char* result_name(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
  }
  return "ncclResult_t?";
}

const char* type_name(int t) {
  static const char* const kNames[] = {"int8",    "uint8",   "int32",   "uint32",  "int64",
                                       "uint64",  "float16", "float32", "float64", "bfloat16"};
  return t >= 0 && t < 10 ? kNames[t] : "?";
}
size_t type_size(int t) {
  static const size_t kSizes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};
  return kSizes[t];
}
const char* op_name(int op) {
  static const char* const kNames[] = {"sum", "prod", "max", "min", "avg"};
  return op >= 0 && op < 5 ? kNames[op] : "?";
}

std::string hex(uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// ---- this thread's state: the last error, the group -------------------------------------------------------
thread_local std::string t_last_error;
thread_local int t_group_depth = 0;
thread_local ncclResult_t t_group_error = ncclSuccess;
thread_local std::vector<ncclComm*> t_pending_inits;  // initializations ncclGroupEnd completes
thread_local std::map<std::string, int> t_ungrouped;  // segment → the rank this thread called outside a group

// A detected misuse: reported like the driver's (stderr once, the report, the driver's last error), kept as
// this thread's ncclGetLastError and, inside a group, as the group's result.
ncclResult_t fail(const char* call, ncclResult_t code, const std::string& msg) {
  const std::string line = std::string(call) + ": " + msg + " [" + result_name(code) + "]";
  rotadam_standin_report(line.c_str());
  t_last_error = line;
  if (t_group_depth > 0 && t_group_error == ncclSuccess) t_group_error = code;
  return code;
}

// ROTADAM_STANDIN_NCCL_TIMEOUT, read strictly (like the driver's settings): unset or empty is the default,
// else decimal digits and nothing more, from 1 to kMaxTimeout.
bool read_timeout(uint64_t* out, std::string* why) {
  const char* text = std::getenv(kTimeoutVar);
  if (text == nullptr || *text == '\0') {
    *out = kDefaultTimeout;
    return true;
  }
  uint64_t v = 0;
  const char* p = text;
  for (; *p >= '0' && *p <= '9' && v <= kMaxTimeout; ++p) v = v * 10 + static_cast<uint64_t>(*p - '0');
  if (p == text || *p != '\0' || v < 1 || v > kMaxTimeout) {
    *why = std::string(kTimeoutVar) + "=\"" + text + "\" is not a whole number of seconds from 1 to " +
           std::to_string(kMaxTimeout);
    return false;
  }
  *out = v;
  return true;
}

// Whether process `pid` (another process of this machine) has exited: gone, or a zombie its parent has not
// reaped yet (which still answers kill).
bool process_gone(int pid) {
  if (pid <= 0 || pid == getpid()) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;  // cannot tell
  char buf[512];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* close = std::strrchr(buf, ')');  // "pid (comm) S …": the state follows the last ')'
  return close != nullptr && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X');
}

// ---- the shared segment ------------------------------------------------------------------------------------
enum Kind : int32_t { kNone = 0, kAllReduce, kBroadcast, kReduceScatter, kAllGather };

// What a rank called: every rank's must equal rank 0's.
struct Desc {
  int32_t kind = kNone;
  int32_t type = 0;
  int32_t op = -1;    // reductions only
  int32_t root = -1;  // broadcast only
  uint64_t count = 0;  // the call's count argument (sendcount of all-gather, recvcount of reduce-scatter)
  bool operator==(const Desc& o) const {
    return kind == o.kind && type == o.type && op == o.op && root == o.root && count == o.count;
  }
};

const char* kind_name(int32_t k) {
  switch (k) {
    case kAllReduce: return "ncclAllReduce";
    case kBroadcast: return "ncclBroadcast";
    case kReduceScatter: return "ncclReduceScatter";
    case kAllGather: return "ncclAllGather";
  }
  return "nothing";
}

// "ncclAllReduce(count 12, float32, sum)"
std::string describe(const Desc& d) {
  std::string s = std::string(kind_name(d.kind)) + "(count " + std::to_string(d.count) + ", " + type_name(d.type);
  if (d.kind == kAllReduce || d.kind == kReduceScatter) s += std::string(", ") + op_name(d.op);
  if (d.kind == kBroadcast) s += ", root " + std::to_string(d.root);
  return s + ")";
}

// The segment's first bytes.
struct Header {
  char magic[16];
  std::atomic<uint32_t> ready;  // 1 once the creator has written the rest
  int32_t nranks;
  int32_t creator_rank;
  uint64_t slot_bytes;
  uint64_t header_bytes;  // where the data slots start
  std::atomic<int32_t> attached;
};

// One rank's part of the header (RankState[nranks] follows Header).
struct alignas(64) RankState {
  std::atomic<uint32_t> claimed;    // 0 free, 1 being claimed, 2 claimed (pid and device set)
  std::atomic<int32_t> pid;
  std::atomic<int32_t> device;
  std::atomic<uint64_t> posted;     // the last collective whose descriptor and data are in the slot
  std::atomic<uint64_t> done;       // the last collective this rank finished reading
  std::atomic<uint64_t> abandoned;  // 0, or the first collective this rank will never complete …
  char reason[512];                 // … and why (written before `abandoned`)
  Desc desc;                        // of collective `posted` (written before `posted`)
};

constexpr size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }
constexpr size_t kStatesAt = round_up(sizeof(Header), 64);
size_t header_bytes(int nranks) {
  return round_up(kStatesAt + static_cast<size_t>(nranks) * sizeof(RankState), 4096);
}

// One rank's mapping of its communicator's segment, shared by its handle and its queued collectives (so a
// destroyed handle's queued work still runs); detaches when the last of them goes.
struct Core {
  std::string name;
  int fd = -1;
  char* base = nullptr;
  size_t len = 0;
  bool counted = false;  // in the segment's `attached`
  int nranks = 0, rank = 0, device = 0;
  uint64_t slot_bytes = 0, timeout_s = kDefaultTimeout;
  std::atomic<bool> aborted{false};
  uint64_t reserved = 0;  // bytes of this rank's slot backed by /dev/shm pages (posix_fallocate)

  Header& header() const { return *reinterpret_cast<Header*>(base); }
  RankState& state(int r) const { return reinterpret_cast<RankState*>(base + kStatesAt)[r]; }
  char* slot(int r) const { return base + header().header_bytes + static_cast<size_t>(r) * slot_bytes; }

  ~Core() {
    if (base != nullptr) {
      if (counted && header().attached.fetch_sub(1, std::memory_order_acq_rel) == 1) shm_unlink(name.c_str());
      munmap(base, len);
    }
    if (fd >= 0) close(fd);
  }
};

// Marks this rank as never completing collective k (the first such), with why; its waiting peers fail at once.
void abandon(Core& c, uint64_t k, const std::string& why) {
  RankState& me = c.state(c.rank);
  if (me.abandoned.load(std::memory_order_acquire) != 0) return;
  std::snprintf(me.reason, sizeof me.reason, "%s", why.c_str());
  me.abandoned.store(k, std::memory_order_release);
}

}  // namespace

// What ncclComm_t points at. Never freed, so a handle used after ncclCommDestroy is recognized.
struct ncclComm {
  uint64_t serial = 0;
  std::mutex mu;               // one call at a time (NCCL forbids concurrent use of a communicator)
  std::shared_ptr<Core> core;  // null once destroyed
  int nranks = 0, rank = 0, device = 0;
  std::string gone;            // why it cannot be used: destroyed, aborted, its initialization failed …
  bool init_failed = false;    // … the last (then ncclCommDestroy and ncclCommAbort may still release it)
  uint64_t issued = 0;         // collectives queued
  std::string describe() const {
    return "communicator #" + std::to_string(serial) + " (rank " + std::to_string(rank) + " of " +
           std::to_string(nranks) + ", device " + std::to_string(device) + ")";
  }
};

namespace {

std::mutex g_mu;                 // guards g_comms and g_next_serial
std::set<ncclComm*> g_comms;     // every communicator handed out
uint64_t g_next_serial = 1;

// The live communicator `comm` (its mutex locked into *lock), or a failure naming why it is not one. With
// `releasing` (ncclCommDestroy, ncclCommAbort), one whose initialization failed is accepted too: NCCL's
// documentation has the caller release such a communicator.
ncclResult_t lookup(const char* call, ncclComm_t comm, std::unique_lock<std::mutex>* lock, bool releasing = false) {
  if (comm == nullptr) return fail(call, ncclInvalidArgument, "comm is NULL");
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_comms.count(comm) == 0)
      return fail(call, ncclInvalidArgument,
                  "comm " + hex(reinterpret_cast<uint64_t>(comm)) +
                      " is not a communicator (never returned by ncclCommInitRank or ncclCommInitAll)");
  }
  *lock = std::unique_lock<std::mutex>(comm->mu);
  if (comm->init_failed && releasing) return ncclSuccess;
  if (!comm->gone.empty()) return fail(call, ncclInvalidArgument, comm->describe() + " " + comm->gone);
  return ncclSuccess;
}

ncclComm* new_comm(std::shared_ptr<Core> core) {
  auto* c = new ncclComm();
  c->nranks = core->nranks;
  c->rank = core->rank;
  c->device = core->device;
  c->core = std::move(core);
  std::lock_guard<std::mutex> g(g_mu);
  c->serial = g_next_serial++;
  g_comms.insert(c);
  return c;
}

// Attaches rank `rank` of `nranks` on `device` to the segment `id` names (creating it if it does not exist)
// and claims the rank. Does not wait for the other ranks (wait_joined does).
ncclResult_t attach(const char* call, const ncclUniqueId& id, int nranks, int rank, int device, uint64_t timeout_s,
                    std::shared_ptr<Core>* out) {
  const char* end = static_cast<const char*>(std::memchr(id.internal, '\0', sizeof id.internal));
  if (end == nullptr || std::strncmp(id.internal, kIdPrefix, sizeof kIdPrefix - 1) != 0 ||
      end == id.internal + sizeof kIdPrefix - 1)
    return fail(call, ncclInvalidArgument,
                "the unique id was not made by the stand-in's ncclGetUniqueId (it holds no \"" +
                    std::string(kIdPrefix) + "…\" segment name): pass every rank the id one ncclGetUniqueId made");
  if (nranks < 1 || nranks > kMaxRanks)
    return fail(call, ncclInvalidArgument,
                "nranks " + std::to_string(nranks) + " is not from 1 to " + std::to_string(kMaxRanks) +
                    (nranks > kMaxRanks ? " (the stand-in's limit)" : ""));
  if (rank < 0 || rank >= nranks)
    return fail(call, ncclInvalidArgument,
                "rank " + std::to_string(rank) + " is not from 0 to nranks - 1 = " + std::to_string(nranks - 1));
  auto core = std::make_shared<Core>();
  core->name.assign(id.internal, end);
  core->nranks = nranks;
  core->rank = rank;
  core->device = device;
  core->slot_bytes = kSlotBytes;
  core->timeout_s = timeout_s;
  const std::string seg = "shared-memory segment " + core->name;
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  auto system = [&](const std::string& what) {
    return fail(call, ncclSystemError, what + " " + seg + ": " + std::strerror(errno));
  };

  core->fd = shm_open(core->name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (core->fd >= 0) {
    // the first rank: size it (sparse) and write the header
    const size_t hb = header_bytes(nranks);
    core->len = hb + static_cast<size_t>(nranks) * kSlotBytes;
    if (ftruncate(core->fd, static_cast<off_t>(core->len)) != 0) {
      const ncclResult_t r = system("cannot size the");
      shm_unlink(core->name.c_str());
      return r;
    }
    void* p = mmap(nullptr, core->len, PROT_READ | PROT_WRITE, MAP_SHARED, core->fd, 0);
    if (p == MAP_FAILED) {
      const ncclResult_t r = system("cannot map the");
      shm_unlink(core->name.c_str());
      return r;
    }
    core->base = static_cast<char*>(p);
    Header& h = core->header();
    std::memcpy(h.magic, kMagic, sizeof kMagic);
    h.nranks = nranks;
    h.creator_rank = rank;
    h.slot_bytes = kSlotBytes;
    h.header_bytes = hb;
    h.attached.store(1, std::memory_order_relaxed);
    core->counted = true;
    h.ready.store(1, std::memory_order_release);
  } else if (errno == EEXIST) {
    core->fd = shm_open(core->name.c_str(), O_RDWR, 0);
    if (core->fd < 0) {
      if (errno == ENOENT)
        return fail(call, ncclInvalidUsage,
                    "the communicator of this unique id no longer exists (every rank attached to it destroyed "
                    "it): " + seg);
      return system("cannot open the");
    }
    // wait for the creator's ftruncate and header (microseconds, unless it died in between)
    struct stat st {};
    for (;;) {
      if (fstat(core->fd, &st) != 0) return system("cannot stat the");
      if (st.st_size > 0) break;
      if (Clock::now() > deadline)
        return fail(call, ncclRemoteError, "the rank that created " + seg + " never sized it");
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    core->len = static_cast<size_t>(st.st_size);
    void* p = mmap(nullptr, core->len, PROT_READ | PROT_WRITE, MAP_SHARED, core->fd, 0);
    if (p == MAP_FAILED) return system("cannot map the");
    core->base = static_cast<char*>(p);
    Header& h = core->header();
    while (h.ready.load(std::memory_order_acquire) == 0) {
      if (Clock::now() > deadline)
        return fail(call, ncclRemoteError, "the rank that created " + seg + " never initialized it");
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.nranks < 1 || h.nranks > kMaxRanks ||
        h.header_bytes != header_bytes(h.nranks) ||
        core->len != h.header_bytes + static_cast<size_t>(h.nranks) * h.slot_bytes)
      return fail(call, ncclInvalidArgument, seg + " is not a communicator of this stand-in");
    if (h.nranks != nranks)
      return fail(call, ncclInvalidArgument,
                  "nranks " + std::to_string(nranks) + " (rank " + std::to_string(rank) +
                      ") where the communicator was created with nranks " + std::to_string(h.nranks) + " (by rank " +
                      std::to_string(h.creator_rank) + ")");
    h.attached.fetch_add(1, std::memory_order_acq_rel);
    core->counted = true;
    core->slot_bytes = h.slot_bytes;
  } else {
    return system("cannot create the");
  }

  RankState& me = core->state(rank);
  uint32_t expected = 0;
  if (!me.claimed.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    std::string by;
    if (expected == 2)
      by = " (by process " + std::to_string(me.pid.load()) + ", on device " + std::to_string(me.device.load()) + ")";
    return fail(call, ncclInvalidUsage,
                "rank " + std::to_string(rank) + " of the communicator was already claimed" + by +
                    ": each rank must be initialized once");
  }
  me.pid.store(getpid(), std::memory_order_relaxed);
  me.device.store(device, std::memory_order_relaxed);
  me.claimed.store(2, std::memory_order_release);
  *out = std::move(core);
  return ncclSuccess;
}

// Waits until every rank of `c` has joined (ncclCommInitRank returns then, as NCCL's does), then refuses two
// ranks on one device.
ncclResult_t wait_joined(const char* call, const Core& c) {
  const auto deadline = Clock::now() + std::chrono::seconds(c.timeout_s);
  for (;;) {
    std::vector<int> missing;
    for (int r = 0; r < c.nranks; ++r)
      if (c.state(r).claimed.load(std::memory_order_acquire) != 2) missing.push_back(r);
    if (missing.empty()) break;
    if (Clock::now() > deadline) {
      std::string list;
      for (int r : missing) list += (list.empty() ? "" : ", ") + std::to_string(r);
      return fail(call, ncclRemoteError,
                  "rank " + std::to_string(c.rank) + " of " + std::to_string(c.nranks) + " waited " +
                      std::to_string(c.timeout_s) + " s (" + kTimeoutVar + ") for rank(s) " + list +
                      " to join: never initialized with this unique id (or their process died first)");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (int i = 0; i < c.nranks; ++i)
    for (int j = i + 1; j < c.nranks; ++j)
      if (c.state(i).device.load() == c.state(j).device.load())
        return fail(call, ncclInvalidUsage,
                    "Duplicate GPU detected: rank " + std::to_string(i) + " and rank " + std::to_string(j) +
                        " both on CUDA device " + std::to_string(c.state(i).device.load()) + " (processes " +
                        std::to_string(c.state(i).pid.load()) + " and " + std::to_string(c.state(j).pid.load()) +
                        ")");
  return ncclSuccess;
}

// ---- collectives ------------------------------------------------------------------------------------------
// acc[i] = acc[i] op x[i], i < n: integers wrap, floats round once per operation, max/min propagate NaN.
template <typename T, bool = std::is_integral<T>::value>
struct Arith {
  using type = T;  // floats: as they are
};
template <typename T>
struct Arith<T, true> {
  using type = std::make_unsigned_t<T>;  // integers: unsigned, so that sums and products wrap
};

template <typename T>
void combine(T* acc, const T* x, size_t n, int op) {
  using U = typename Arith<T>::type;
  switch (op) {
    case ncclSum:
    case ncclAvg:
      for (size_t i = 0; i < n; ++i) acc[i] = static_cast<T>(static_cast<U>(acc[i]) + static_cast<U>(x[i]));
      break;
    case ncclProd:
      for (size_t i = 0; i < n; ++i) acc[i] = static_cast<T>(static_cast<U>(acc[i]) * static_cast<U>(x[i]));
      break;
    case ncclMax:
      for (size_t i = 0; i < n; ++i)
        if (acc[i] == acc[i] && (x[i] != x[i] || x[i] > acc[i])) acc[i] = x[i];
      break;
    case ncclMin:
      for (size_t i = 0; i < n; ++i)
        if (acc[i] == acc[i] && (x[i] != x[i] || x[i] < acc[i])) acc[i] = x[i];
      break;
  }
}

template <typename T>
void divide(T* acc, size_t n, int nranks) {
  for (size_t i = 0; i < n; ++i) acc[i] = static_cast<T>(acc[i] / static_cast<T>(nranks));
}

// dst = slot_0[off] op slot_1[off] op … in rank order (count elements of `type`), then / nranks for avg.
template <typename T>
void reduce_typed(const Core& c, size_t off, size_t count, int op, char* dst) {
  std::memcpy(dst, c.slot(0) + off, count * sizeof(T));
  for (int p = 1; p < c.nranks; ++p)
    combine(reinterpret_cast<T*>(dst), reinterpret_cast<const T*>(c.slot(p) + off), count, op);
  if (op == ncclAvg) divide(reinterpret_cast<T*>(dst), count, c.nranks);
}

void reduce(const Core& c, int type, size_t off, size_t count, int op, char* dst) {
  switch (type) {
    case ncclInt8: reduce_typed<int8_t>(c, off, count, op, dst); break;
    case ncclUint8: reduce_typed<uint8_t>(c, off, count, op, dst); break;
    case ncclInt32: reduce_typed<int32_t>(c, off, count, op, dst); break;
    case ncclUint32: reduce_typed<uint32_t>(c, off, count, op, dst); break;
    case ncclInt64: reduce_typed<int64_t>(c, off, count, op, dst); break;
    case ncclUint64: reduce_typed<uint64_t>(c, off, count, op, dst); break;
    case ncclFloat32: reduce_typed<float>(c, off, count, op, dst); break;
    case ncclFloat64: reduce_typed<double>(c, off, count, op, dst); break;
    default: break;  // refused when called
  }
}

// One queued collective of one rank: the work item's payload, with its progress.
struct Op {
  std::shared_ptr<Core> core;
  uint64_t k = 0;  // its number among this rank's collectives on the communicator
  Desc desc;
  const char* send = nullptr;
  char* recv = nullptr;
  uint64_t post_bytes = 0;
  int phase = 0;  // 0: to post; 1: posted, to read; 2: done
  bool started = false;
  Clock::time_point start, last_liveness;
  std::string failure;  // why it failed, if it did
};

// Fails op `o` with `msg` (the driver makes its context sticky and reports it, naming the call).
int op_failed(Op& o, const std::string& msg, char* err, uint64_t err_len) {
  o.failure = msg;
  std::snprintf(err, err_len, "%s", msg.c_str());
  t_last_error = describe(o.desc) + " on rank " + std::to_string(o.core->rank) + ": " + msg;
  return 1;
}

// Op `o` waits for `late` ranks to reach collective `need` (`what`: "post" or "finish reading"): not ready,
// or failed when one of them abandoned it, its process exited, or the timeout passed.
int wait_for(Op& o, const std::vector<int>& late, uint64_t need, const char* what, char* err, uint64_t err_len) {
  const Core& c = *o.core;
  const std::string coll = "collective #" + std::to_string(need);
  for (int p : late) {
    const RankState& s = c.state(p);
    const uint64_t a = s.abandoned.load(std::memory_order_acquire);
    if (a != 0 && a <= need)
      return op_failed(o,
                       "rank " + std::to_string(p) + " will never " + what + " " + coll + ": " +
                           std::string(s.reason, strnlen(s.reason, sizeof s.reason)),
                       err, err_len);
  }
  const auto now = Clock::now();
  if (now - o.last_liveness >= kLivenessEvery) {
    o.last_liveness = now;
    for (int p : late) {
      const int pid = c.state(p).pid.load(std::memory_order_relaxed);
      if (process_gone(pid))
        return op_failed(o,
                         "rank " + std::to_string(p) + " (process " + std::to_string(pid) + ") exited before it " +
                             (std::strcmp(what, "post") == 0 ? "posted " : "finished reading ") + coll,
                         err, err_len);
    }
  }
  if (now - o.start >= std::chrono::seconds(c.timeout_s)) {
    std::string list;
    for (int p : late) list += (list.empty() ? "" : ", ") + std::to_string(p);
    return op_failed(o,
                     "timed out after " + std::to_string(c.timeout_s) + " s (" + kTimeoutVar +
                         ") waiting for rank(s) " + list + " to " + what + " " + coll +
                         ": a peer that never makes this call, or makes it on a stream nothing synchronizes, or "
                         "is stuck",
                     err, err_len);
  }
  return ROTADAM_STANDIN_NOT_READY;
}

// The work item: post, then read (nccl.cpp's overview).
int run_op(void* payload, char* err, uint64_t err_len) {
  Op& o = *static_cast<Op*>(payload);
  Core& c = *o.core;
  if (c.aborted.load())
    return op_failed(o, "rank " + std::to_string(c.rank) + " aborted the communicator (ncclCommAbort) first", err,
                     err_len);
  if (!o.started) {
    o.started = true;
    o.start = o.last_liveness = Clock::now();
  }
  RankState& me = c.state(c.rank);
  std::vector<int> late;
  if (o.phase == 0) {
    for (int p = 0; p < c.nranks; ++p)
      if (c.state(p).done.load(std::memory_order_acquire) < o.k - 1) late.push_back(p);
    if (!late.empty()) return wait_for(o, late, o.k - 1, "finish reading", err, err_len);
    if (o.post_bytes > 0) std::memcpy(c.slot(c.rank), o.send, o.post_bytes);
    me.desc = o.desc;
    me.posted.store(o.k, std::memory_order_release);
    o.phase = 1;
  }
  for (int p = 0; p < c.nranks; ++p)
    if (c.state(p).posted.load(std::memory_order_acquire) < o.k) late.push_back(p);
  if (!late.empty()) return wait_for(o, late, o.k, "post", err, err_len);
  const Desc d0 = c.state(0).desc;
  for (int p = 1; p < c.nranks; ++p) {
    const Desc dp = c.state(p).desc;
    if (!(dp == d0)) {
      me.done.store(o.k, std::memory_order_release);
      return op_failed(o,
                       "collective #" + std::to_string(o.k) + " of the communicator: rank " + std::to_string(p) +
                           " called " + describe(dp) + " where rank 0 called " + describe(d0),
                       err, err_len);
    }
  }
  const Desc& d = o.desc;
  const size_t size = type_size(d.type), bytes = d.count * size;
  switch (bytes == 0 ? kNone : d.kind) {  // count 0: nothing to write (the buffers may be NULL)
    case kAllReduce: reduce(c, d.type, 0, d.count, d.op, o.recv); break;
    case kReduceScatter: reduce(c, d.type, static_cast<size_t>(c.rank) * bytes, d.count, d.op, o.recv); break;
    case kBroadcast: std::memcpy(o.recv, c.slot(d.root), bytes); break;
    case kAllGather:
      for (int p = 0; p < c.nranks; ++p) std::memcpy(o.recv + static_cast<size_t>(p) * bytes, c.slot(p), bytes);
      break;
    default: break;
  }
  me.done.store(o.k, std::memory_order_release);
  o.phase = 2;
  return 0;
}

// Called once the work ran or was discarded (with the driver's lock held: no call into libcuda.so). A
// collective that did not complete is one this rank will never complete: its peers learn it at once.
void release_op(void* payload) {
  Op* o = static_cast<Op*>(payload);
  if (o->phase != 2)
    abandon(*o->core, o->k,
            "its " + describe(o->desc) + " " +
                (o->failure.empty() ? std::string("was discarded before it ran (device ") +
                                          std::to_string(o->core->device) +
                                          "'s context failed or was destroyed first)"
                                    : "failed: " + o->failure));
  delete o;
}

struct Call {
  const char* name;
  Kind kind;
  const void* send;
  void* recv;
  size_t count;
  int type;
  int op;
  int root;
  ncclComm_t comm;
  cudaStream_t stream;
};

// Checks and queues one collective.
ncclResult_t collective(const Call& a) {
  std::unique_lock<std::mutex> lock;
  if (ncclResult_t r = lookup(a.name, a.comm, &lock)) return r;
  ncclComm& comm = *a.comm;
  Core& core = *comm.core;
  const int n = comm.nranks, rank = comm.rank;
  const bool reduction = a.kind == kAllReduce || a.kind == kReduceScatter;
  if (a.type < 0 || a.type > 9)
    return fail(a.name, ncclInvalidArgument,
                "datatype " + std::to_string(a.type) + " is not an ncclDataType_t (0 to 9)");
  if (reduction && (a.op < 0 || a.op > 4))
    return fail(a.name, ncclInvalidArgument,
                "op " + std::to_string(a.op) +
                    " is not an ncclRedOp_t (0 to 4; the stand-in has no ncclRedOpCreatePreMulSum)");
  if (reduction && (a.type == ncclFloat16 || a.type == ncclBfloat16))
    return fail(a.name, ncclInvalidArgument,
                std::string("the stand-in does not reduce ") + type_name(a.type) +
                    " (it reduces int8, uint8, int32, uint32, int64, uint64, float32 and float64; broadcast and "
                    "all-gather copy any type)");
  if (a.kind == kBroadcast && (a.root < 0 || a.root >= n))
    return fail(a.name, ncclInvalidArgument,
                "root " + std::to_string(a.root) + " is not a rank of the communicator (nranks " +
                    std::to_string(n) + ")");
  Desc d;
  d.kind = a.kind;
  d.type = a.type;
  d.op = reduction ? a.op : -1;
  d.root = a.kind == kBroadcast ? a.root : -1;
  d.count = a.count;
  const std::string call = describe(d);

  // bytes read from sendbuff (= posted) and written to recvbuff
  const uint64_t size = type_size(a.type);
  if (a.count > UINT64_MAX / size / static_cast<uint64_t>(n))
    return fail(a.name, ncclInvalidArgument, call + ": the byte count overflows");
  const uint64_t bytes = a.count * size, all = bytes * static_cast<uint64_t>(n);
  uint64_t send_bytes = bytes, recv_bytes = bytes;
  if (a.kind == kBroadcast && rank != a.root) send_bytes = 0;  // only the root's sendbuff is read
  if (a.kind == kReduceScatter) send_bytes = all;
  if (a.kind == kAllGather) recv_bytes = all;
  if (send_bytes > core.slot_bytes)
    return fail(a.name, ncclSystemError,
                call + " posts " + std::to_string(send_bytes) + " bytes: the stand-in exchanges at most " +
                    std::to_string(core.slot_bytes) + " bytes per rank and call through shared memory (split it)");
  const uint64_t send = reinterpret_cast<uint64_t>(a.send), recv = reinterpret_cast<uint64_t>(a.recv);
  struct Buf {
    const char* name;
    uint64_t p, n;
  } bufs[] = {{"sendbuff", send, send_bytes}, {"recvbuff", recv, recv_bytes}};
  for (const Buf& b : bufs) {
    if (b.n == 0) continue;
    const std::string what = std::string(b.name) + " (" + std::to_string(b.n) + " bytes)";
    if (b.p == 0) return fail(a.name, ncclInvalidArgument, call + ": " + what + " is NULL");
    char why[1024] = {0};
    if (rotadam_standin_check_device_range_on(comm.device, b.p, b.n, what.c_str(), why, sizeof why) != 0)
      return fail(a.name, ncclInvalidArgument, call + " on " + comm.describe() + ": " + why);
  }
  if (send_bytes > 0 && recv_bytes > 0 && send < recv + recv_bytes && recv < send + send_bytes) {
    bool in_place = false;
    std::string form;
    switch (a.kind) {
      case kAllReduce:
      case kBroadcast:
        in_place = send == recv;
        form = "sendbuff == recvbuff";
        break;
      case kAllGather:
        in_place = send == recv + static_cast<uint64_t>(rank) * bytes;
        form = "sendbuff == recvbuff + rank * sendcount * size";
        break;
      case kReduceScatter:
        in_place = recv == send + static_cast<uint64_t>(rank) * bytes;
        form = "recvbuff == sendbuff + rank * recvcount * size";
        break;
      default: break;
    }
    if (!in_place)
      return fail(a.name, ncclInvalidArgument,
                  call + " on " + comm.describe() + ": sendbuff " + hex(send) + " (" + std::to_string(send_bytes) +
                      " bytes) and recvbuff " + hex(recv) + " (" + std::to_string(recv_bytes) +
                      " bytes) overlap, and not in the in-place form (" + form + ")");
  }
  char why[1024] = {0};
  if (rotadam_standin_check_stream_on(comm.device, a.stream, why, sizeof why) != 0)
    return fail(a.name, ncclInvalidArgument, call + " on " + comm.describe() + ": stream: " + why);
  if (t_group_depth == 0) {
    auto it = t_ungrouped.emplace(core.name, rank).first;
    if (it->second != rank)
      return fail(a.name, ncclInvalidUsage,
                  call + " on rank " + std::to_string(rank) + " outside a group, from the thread that called rank " +
                      std::to_string(it->second) +
                      "'s collectives of this communicator outside a group: NCCL's documentation requires one "
                      "thread driving several ranks to group their calls (ncclGroupStart/ncclGroupEnd), since "
                      "each call may block until every rank has made it (this thread would deadlock)");
  }
  if (send_bytes > core.reserved) {
    // back this rank's slot with /dev/shm pages now: a full /dev/shm is an error here, not a SIGBUS later
    const off_t at = static_cast<off_t>(core.header().header_bytes + static_cast<uint64_t>(rank) * core.slot_bytes);
    const int e = posix_fallocate(core.fd, at, static_cast<off_t>(send_bytes));
    if (e != 0)
      return fail(a.name, ncclSystemError,
                  call + ": cannot reserve " + std::to_string(send_bytes) + " bytes of shared memory in " +
                      core.name + " (" + std::strerror(e) + "): the stand-in exchanges data through /dev/shm (in a "
                      "container, enlarge it, e.g. docker --shm-size)");
    core.reserved = send_bytes;
  }

  auto* o = new Op();
  o->core = comm.core;
  o->k = comm.issued + 1;
  o->desc = d;
  o->send = static_cast<const char*>(a.send);
  o->recv = static_cast<char*>(a.recv);
  o->post_bytes = send_bytes;
  const std::string what = call + " on rank " + std::to_string(rank) + " of " + std::to_string(n) +
                           " (collective #" + std::to_string(o->k) + ")";
  std::memset(why, 0, sizeof why);
  if (rotadam_standin_enqueue_on(comm.device, a.stream, what.c_str(), ROTADAM_STANDIN_WORK_COLLECTIVE, run_op,
                                 release_op, o, why, sizeof why) != 0) {
    // Nothing was queued (release_op ran: this rank never completes collective k, which its peers learn).
    // The driver reported why (a dead stream) or set its last error (a failed context).
    t_last_error = std::string(a.name) + ": " + why + " [" + result_name(ncclUnhandledCudaError) + "]";
    if (t_group_depth > 0 && t_group_error == ncclSuccess) t_group_error = ncclUnhandledCudaError;
    return ncclUnhandledCudaError;
  }
  ++comm.issued;
  return ncclSuccess;
}

// Completes (waits for) a communicator's initialization; on failure it cannot be used.
ncclResult_t complete_init(const char* call, ncclComm* comm) {
  std::shared_ptr<Core> core;
  {
    std::lock_guard<std::mutex> g(comm->mu);
    core = comm->core;
  }
  if (!core) return ncclSuccess;  // destroyed meanwhile
  const ncclResult_t r = wait_joined(call, *core);
  if (r != ncclSuccess) {
    std::lock_guard<std::mutex> g(comm->mu);
    comm->gone = "cannot be used: its initialization failed (" + t_last_error + ")";
    comm->init_failed = true;
    comm->core.reset();
  }
  return r;
}

}  // namespace

// ==== exported: NCCL's API ==================================================================================
STANDIN_API ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return fail("ncclGetVersion", ncclInvalidArgument, "version is NULL");
  *version = kVersionCode;
  return ncclSuccess;
}

STANDIN_API ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return fail("ncclGetUniqueId", ncclInvalidArgument, "uniqueId is NULL");
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  const uint64_t rnd = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char name[NCCL_UNIQUE_ID_BYTES];
  std::snprintf(name, sizeof name, "%s%d-%llu-%016llx", kIdPrefix, static_cast<int>(getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1) + 1), static_cast<unsigned long long>(rnd));
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, name, std::strlen(name));
  return ncclSuccess;
}

STANDIN_API ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  const char* call = "ncclCommInitRank";
  if (comm == nullptr) return fail(call, ncclInvalidArgument, "comm is NULL");
  uint64_t timeout = 0;
  std::string why;
  if (!read_timeout(&timeout, &why)) return fail(call, ncclInvalidArgument, why);
  int device = 0;
  char cuda_why[1024] = {0};
  if (const unsigned e = rotadam_standin_current_device(&device, cuda_why, sizeof cuda_why))
    return fail(call, e == CUDA_ERROR_INVALID_CONTEXT || e == CUDA_ERROR_NOT_INITIALIZED ? ncclInvalidUsage
                                                                                         : ncclUnhandledCudaError,
                std::string("the calling thread's CUDA device: ") + cuda_why +
                    " (make the device's context current first; NCCL would take device 0)");
  std::shared_ptr<Core> core;
  if (ncclResult_t r = attach(call, commId, nranks, rank, device, timeout, &core)) return r;
  ncclComm* c = new_comm(std::move(core));
  if (t_group_depth > 0) {
    t_pending_inits.push_back(c);  // completed by ncclGroupEnd
  } else if (ncclResult_t r = complete_init(call, c)) {
    return r;
  }
  *comm = c;
  return ncclSuccess;
}

STANDIN_API ncclResult_t ncclCommInitAll(ncclComm_t* comms, int ndev, const int* devlist) {
  const char* call = "ncclCommInitAll";
  if (comms == nullptr) return fail(call, ncclInvalidArgument, "comms is NULL");
  if (ndev < 1) return fail(call, ncclInvalidArgument, "ndev " + std::to_string(ndev) + " is less than 1");
  uint64_t timeout = 0;
  std::string why;
  if (!read_timeout(&timeout, &why)) return fail(call, ncclInvalidArgument, why);
  int count = 0;
  if (cuInit(0) != CUDA_SUCCESS || cuDeviceGetCount(&count) != CUDA_SUCCESS)
    return fail(call, ncclUnhandledCudaError, "the CUDA driver cannot count its devices (cuInit failed)");
  std::vector<int> devs(static_cast<size_t>(ndev));
  for (int i = 0; i < ndev; ++i) {
    devs[static_cast<size_t>(i)] = devlist != nullptr ? devlist[i] : i;
    if (devs[static_cast<size_t>(i)] < 0 || devs[static_cast<size_t>(i)] >= count)
      return fail(call, ncclInvalidArgument,
                  "devlist[" + std::to_string(i) + "] = " + std::to_string(devs[static_cast<size_t>(i)]) +
                      " is not a device (" + std::to_string(count) + " device(s))");
    for (int j = 0; j < i; ++j)
      if (devs[static_cast<size_t>(j)] == devs[static_cast<size_t>(i)])
        return fail(call, ncclInvalidUsage,
                    "Duplicate GPU detected: devlist[" + std::to_string(j) + "] and devlist[" + std::to_string(i) +
                        "] are both device " + std::to_string(devs[static_cast<size_t>(i)]));
  }
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id)) return r;
  std::vector<ncclComm*> made;
  auto undo = [&made] {
    for (ncclComm* c : made) {
      std::lock_guard<std::mutex> g(c->mu);
      c->gone = "cannot be used: ncclCommInitAll failed";
      c->init_failed = true;
      c->core.reset();
    }
  };
  for (int i = 0; i < ndev; ++i) {
    std::shared_ptr<Core> core;
    if (ncclResult_t r = attach(call, id, ndev, i, devs[static_cast<size_t>(i)], timeout, &core)) {
      undo();
      return r;
    }
    made.push_back(new_comm(std::move(core)));
  }
  for (ncclComm* c : made)
    if (ncclResult_t r = complete_init(call, c)) {
      undo();
      return r;
    }
  for (int i = 0; i < ndev; ++i) comms[i] = made[static_cast<size_t>(i)];
  return ncclSuccess;
}

STANDIN_API ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;  // as NCCL's
  std::unique_lock<std::mutex> lock;
  if (ncclResult_t r = lookup("ncclCommDestroy", comm, &lock, true)) return r;
  comm->gone = "was destroyed by ncclCommDestroy";
  comm->init_failed = false;
  comm->core.reset();  // queued collectives keep the segment mapped until they ran
  return ncclSuccess;
}

STANDIN_API ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  std::unique_lock<std::mutex> lock;
  if (ncclResult_t r = lookup("ncclCommAbort", comm, &lock, true)) return r;
  if (comm->core) {
    Core& c = *comm->core;
    c.aborted.store(true);
    abandon(c, c.state(c.rank).done.load() + 1, "rank " + std::to_string(c.rank) + " called ncclCommAbort");
  }
  comm->gone = "was aborted by ncclCommAbort";
  comm->init_failed = false;
  comm->core.reset();
  return ncclSuccess;
}

namespace {
// ncclCommCount, ncclCommCuDevice, ncclCommUserRank: the communicator's `field` into *out.
ncclResult_t query(const char* call, ncclComm_t comm, int* out, const char* out_name, int ncclComm::*field) {
  std::unique_lock<std::mutex> lock;
  if (ncclResult_t r = lookup(call, comm, &lock)) return r;
  if (out == nullptr) return fail(call, ncclInvalidArgument, std::string(out_name) + " is NULL");
  *out = comm->*field;
  return ncclSuccess;
}
}  // namespace

STANDIN_API ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  return query("ncclCommCount", comm, count, "count", &ncclComm::nranks);
}

STANDIN_API ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  return query("ncclCommCuDevice", comm, device, "device", &ncclComm::device);
}

STANDIN_API ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  return query("ncclCommUserRank", comm, rank, "rank", &ncclComm::rank);
}

STANDIN_API ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                       ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return collective({"ncclAllReduce", kAllReduce, sendbuff, recvbuff, count, static_cast<int>(datatype),
                     static_cast<int>(op), -1, comm, stream});
}

STANDIN_API ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                       int root, ncclComm_t comm, cudaStream_t stream) {
  return collective(
      {"ncclBroadcast", kBroadcast, sendbuff, recvbuff, count, static_cast<int>(datatype), -1, root, comm, stream});
}

STANDIN_API ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                           cudaStream_t stream) {
  return collective({"ncclReduceScatter", kReduceScatter, sendbuff, recvbuff, recvcount, static_cast<int>(datatype),
                     static_cast<int>(op), -1, comm, stream});
}

STANDIN_API ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount,
                                       ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream) {
  return collective({"ncclAllGather", kAllGather, sendbuff, recvbuff, sendcount, static_cast<int>(datatype), -1, -1,
                     comm, stream});
}

STANDIN_API ncclResult_t ncclGroupStart(void) {
  if (t_group_depth++ == 0) t_group_error = ncclSuccess;
  return ncclSuccess;
}

STANDIN_API ncclResult_t ncclGroupEnd(void) {
  const char* call = "ncclGroupEnd";
  if (t_group_depth == 0) return fail(call, ncclInvalidUsage, "no ncclGroupStart to end (group calls nest)");
  if (--t_group_depth > 0) return ncclSuccess;
  ncclResult_t result = t_group_error;
  std::vector<ncclComm*> pending;
  pending.swap(t_pending_inits);
  for (ncclComm* c : pending) {
    const ncclResult_t r = complete_init(call, c);
    if (result == ncclSuccess) result = r;
  }
  t_group_error = ncclSuccess;
  return result;
}

STANDIN_API const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

STANDIN_API const char* ncclGetLastError(ncclComm_t) { return t_last_error.c_str(); }
