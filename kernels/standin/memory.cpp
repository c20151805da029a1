// memory.cpp: the driver stand-in's memory: device allocations (each its own mapping of host memory ending at
// a PROT_NONE guard page, filled with 0xFF), pinned host allocations, the quarantine that keeps freed mappings
// inaccessible, the SIGSEGV handler that names the work touching them, the checks of device and host ranges
// and the messages saying where an address points, and the copies and memsets (queued on a stream, run at once
// where the host must wait). driver.h has the overview of the stand-in.
#include "driver.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace rotadam_standin {

// ---- the fault handler: names the work that touched a guard page or freed memory ------------------------
namespace {

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

}  // namespace

void install_fault_handler(State& s) {
  if (s.segv_installed) return;
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &s.previous_segv) == 0) s.segv_installed = true;
}

// ---- memory ---------------------------------------------------------------------------------------------
namespace {

// x rounded up to a multiple of a, or false where that overflows 64 bits (a huge size must fail, not wrap to a
// small mapping).
bool round_up(uint64_t x, uint64_t a, uint64_t* out) {
  if (x > UINT64_MAX - (a - 1)) return false;
  *out = (x + a - 1) / a * a;
  return true;
}

// Maps `size` bytes ending just before a PROT_NONE guard page, 256-byte aligned, filled with 0xFF. Returns ""
// or, for the caller's CUDA_ERROR_OUT_OF_MEMORY, why not, starting with the size.
std::string map_memory(uint64_t size, Allocation* a) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  uint64_t rounded = 0, body = 0;
  if (!round_up(size, kAllocAlign, &rounded) || !round_up(rounded, page, &body) || body > UINT64_MAX - page)
    return std::to_string(size) + " bytes requested: rounded up to a multiple of " + std::to_string(kAllocAlign) +
           " bytes and of the page size, plus a guard page, the mapping's size overflows 64 bits";
  const uint64_t len = body + page;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    return std::to_string(size) + " bytes requested: the host could not map them (" + std::strerror(errno) + ")";
  char* base = static_cast<char*>(m);
  if (mprotect(base + body, page, PROT_NONE) != 0) {
    const int err = errno;
    munmap(m, len);
    return std::to_string(size) + " bytes requested: the host could not protect their guard page (" +
           std::strerror(err) + ")";
  }
  a->map = base;
  a->map_len = len;
  a->base = reinterpret_cast<uint64_t>(base + (body - rounded));
  a->size = size;
  std::memset(reinterpret_cast<void*>(a->base), 0xff, rounded);
  return "";
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

}  // namespace

const Allocation* find(const std::map<uint64_t, Allocation>& m, uint64_t p, uint64_t n) {
  auto it = m.upper_bound(p);
  if (it == m.begin()) return nullptr;
  --it;
  const Allocation& a = it->second;
  if (p < a.base || p - a.base > a.size || n > a.size - (p - a.base)) return nullptr;
  return &a;
}

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

std::string check_device_range(State& s, Context* c, uint64_t p, uint64_t n, const char* what, bool current) {
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
    return std::string(what) + ": " + a->describe() + " belongs to " + a->ctx->name() + ", not to " +
           (current ? "the current " : "") + c->name();
  return "";
}

namespace {

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
    if (pinned) {
      // Not written until the stream runs: a read before a synchronization sees NaN. Queued work that still
      // reads these bytes (an upload from them) or writes them runs first, so that it sees what the program
      // put there, not the poison.
      run_host_users(a, dst, n);
      if (CUresult r = after_run(a, c)) return r;
      std::memset(d, 0xff, n);
    } else {
      drain = true;  // into pageable memory the call returns only when the copy is done
    }
  }
  // Copies from or into pinned memory touch it when they run; the range lets a later poisoning run them first.
  HostRange host;
  if (pinned) host = kind == CopyKind::HtoD ? HostRange{src, src + n} : HostRange{dst, dst + n};
  const uint64_t seq =
      enqueue(a.s, st, a.where() + " (" + std::to_string(n) + " bytes)", std::move(run), {}, host);
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

CUresult host_alloc(Api& a, void** pp, size_t bytesize, unsigned flags) {
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (pp == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "pp is NULL");
  if ((flags & ~0x7u) != 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "unknown flags " + hex(flags));
  if (bytesize == 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "a zero-byte allocation");
  Allocation al;
  const std::string why = map_memory(bytesize, &al);
  if (!why.empty()) return a.fail(CUDA_ERROR_OUT_OF_MEMORY, why);
  al.serial = a.s.next_serial++;
  al.origin = a.where();
  al.ctx = c;
  al.pinned = true;
  *pp = reinterpret_cast<void*>(al.base);
  a.s.host_allocs.emplace(al.base, std::move(al));
  return CUDA_SUCCESS;
}

}  // namespace
}  // namespace rotadam_standin

using namespace rotadam_standin;

// ==== exported: memory =====================================================================================
STANDIN_API CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  Api a("cuMemAlloc_v2");
  Context* c = nullptr;
  if (CUresult r = current(a, &c)) return r;
  if (dptr == nullptr) return a.fail(CUDA_ERROR_INVALID_VALUE, "dptr is NULL");
  if (bytesize == 0) return a.fail(CUDA_ERROR_INVALID_VALUE, "a zero-byte allocation (the driver rejects bytesize 0)");
  const uint64_t free_bytes = a.s.total_mem - std::min(a.s.used_bytes, a.s.total_mem);
  if (bytesize > free_bytes)
    return a.fail(CUDA_ERROR_OUT_OF_MEMORY, std::to_string(bytesize) + " bytes requested, " +
                                                std::to_string(free_bytes) + " of " + std::to_string(a.s.total_mem) +
                                                " free");
  Allocation al;
  const std::string why = map_memory(bytesize, &al);
  if (!why.empty()) return a.fail(CUDA_ERROR_OUT_OF_MEMORY, why);
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
  // Implicit synchronization: queued work that may use the memory runs first. (A collective waiting for its
  // peers releases the lock meanwhile: the allocation is looked up again.)
  sync_context(a, it->second.ctx);
  it = a.s.device_allocs.find(dptr);
  if (it == a.s.device_allocs.end())
    return a.fail(CUDA_ERROR_INVALID_VALUE, hex(dptr) + " was freed by another thread while this call waited for "
                                            "the queued work");
  Allocation al = std::move(it->second);
  a.s.device_allocs.erase(it);
  a.s.used_bytes -= al.size;
  quarantine(a.s, std::move(al), a.where());
  return after_run(a, c);
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
  it = a.s.host_allocs.find(v);     // (looked up again: a waiting collective releases the lock)
  if (it == a.s.host_allocs.end())
    return a.fail(CUDA_ERROR_INVALID_VALUE, hex(v) + " was freed by another thread while this call waited for the "
                                            "queued work");
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
