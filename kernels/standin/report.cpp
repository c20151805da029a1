// report.cpp: the driver stand-in's one State and this thread's view of it (current context, last error, the
// work it is running), the error report (each misuse counted, printed to stderr once, kept as this thread's
// last error; sticky failures of a context), and the exported rotadam_standin_* functions: the report, the
// last error and the entry-point list for the tests, and the checks, the work queue and the report that
// libcublas.so and libnccl.so.2 use (the *_on forms name a device instead of the current context: an NCCL
// communicator's). driver.h has the overview of the stand-in.
#include "driver.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace rotadam_standin {

State& state() {
  static State* s = new State();  // never destroyed: the library may be dlclose'd and reopened
  return *s;
}

thread_local Context* t_current = nullptr;
thread_local std::string t_last_error;
thread_local const char* t_running = nullptr;

std::string hex(uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

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

void make_sticky(State& s, Context* c, CUresult code, const std::string& line) {
  record(s, line);
  if (c != nullptr && c->sticky == CUDA_SUCCESS) {
    c->sticky = code;
    c->sticky_msg = line;
  }
}

}  // namespace rotadam_standin

using namespace rotadam_standin;

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

namespace {

// Copies a failed check's reason into the caller's buffer.
unsigned int with_reason(CUresult r, const Api& a, char* why, uint64_t why_len) {
  if (r != CUDA_SUCCESS && why != nullptr && why_len > 0) std::snprintf(why, why_len, "%s", a.message.c_str());
  return r;
}

// Device `device`'s primary context, active (and not failed, unless `allow_sticky`): the *_on functions'
// counterpart of current().
CUresult device_context(Api& a, int device, Context** out, bool allow_sticky) {
  if (!a.s.initialized)
    return a.fail(CUDA_ERROR_NOT_INITIALIZED,
                  a.s.init_error == CUDA_SUCCESS ? std::string("cuInit has not been called")
                                                 : "cuInit failed: " + a.s.init_message);
  if (device < 0 || device >= a.s.device_count)
    return a.fail(CUDA_ERROR_INVALID_DEVICE, "device " + std::to_string(device) + " does not exist (" +
                                                 std::to_string(a.s.device_count) + " device(s))");
  Context* c = a.s.contexts[static_cast<size_t>(device)].get();
  if (c->refcount == 0)
    return a.fail(CUDA_ERROR_INVALID_CONTEXT, c->name() + " is not active (not retained, or released)");
  if (c->sticky != CUDA_SUCCESS && !allow_sticky) return a.sticky(c);
  *out = c;
  return CUDA_SUCCESS;
}

// Queues `run(payload)` on stream `h` of context c (rotadam_standin_enqueue and _on): `run` returns 0 (done),
// ROTADAM_STANDIN_NOT_READY (try again later) or anything else (failed, with its message in err).
void enqueue_work(Api& a, const std::shared_ptr<Stream>& st, rotadam_standin_work_fn run, std::shared_ptr<void> owned,
                  bool collective) {
  enqueue_status(
      a.s, st, a.where(),
      [owned, run](std::string* err) {
        char buf[2048] = {0};
        const int r = run(owned.get(), buf, sizeof buf);
        if (r == 0) return kWorkDone;
        if (r == ROTADAM_STANDIN_NOT_READY) return kWorkNotReady;
        *err = buf[0] != '\0' ? buf : "failed";
        return kWorkFailed;
      },
      collective);
}

}  // namespace

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
  return with_reason(r, a, why, why_len);
}

STANDIN_API unsigned int rotadam_standin_check_device_range_on(int device, uint64_t ptr, uint64_t bytes,
                                                               const char* what, char* why, uint64_t why_len) {
  Api a(what);
  a.quiet = true;
  Context* c = nullptr;
  CUresult r = device_context(a, device, &c, true);
  if (r == CUDA_SUCCESS) {
    a.message = check_device_range(a.s, c, ptr, bytes, what, false);
    if (!a.message.empty()) r = CUDA_ERROR_ILLEGAL_ADDRESS;
  }
  return with_reason(r, a, why, why_len);
}

STANDIN_API unsigned int rotadam_standin_check_stream(CUstream stream, char* why, uint64_t why_len) {
  Api a("stream check");
  a.quiet = true;
  Context* c = nullptr;
  CUresult r = current(a, &c, true);
  std::shared_ptr<Stream> st;
  if (r == CUDA_SUCCESS) r = resolve_stream(a, c, stream, &st);
  return with_reason(r, a, why, why_len);
}

STANDIN_API unsigned int rotadam_standin_check_stream_on(int device, CUstream stream, char* why, uint64_t why_len) {
  Api a("stream check");
  a.quiet = true;
  Context* c = nullptr;
  CUresult r = device_context(a, device, &c, true);
  std::shared_ptr<Stream> st;
  if (r == CUDA_SUCCESS) r = resolve_stream(a, c, stream, &st, false);
  return with_reason(r, a, why, why_len);
}

STANDIN_API unsigned int rotadam_standin_current_device(int* device, char* why, uint64_t why_len) {
  Api a("current device");
  a.quiet = true;
  Context* c = nullptr;
  CUresult r = current(a, &c);
  if (r == CUDA_SUCCESS) *device = c->device;
  return with_reason(r, a, why, why_len);
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
  if (r != CUDA_SUCCESS) return with_reason(r, a, why, why_len);
  enqueue_work(a, st, run, std::move(owned), false);
  return CUDA_SUCCESS;
}

STANDIN_API unsigned int rotadam_standin_enqueue_on(int device, CUstream stream, const char* what, unsigned int flags,
                                                    rotadam_standin_work_fn run, void (*release)(void*), void* payload,
                                                    char* why, uint64_t why_len) {
  std::shared_ptr<void> owned(payload, [release](void* p) {
    if (release != nullptr) release(p);
  });
  Api a(what);
  Context* c = nullptr;
  CUresult r = CUDA_SUCCESS;
  if ((flags & ~ROTADAM_STANDIN_WORK_COLLECTIVE) != 0)
    r = a.fail(CUDA_ERROR_INVALID_VALUE, "unknown flags " + hex(flags));
  if (r == CUDA_SUCCESS) r = device_context(a, device, &c, false);
  std::shared_ptr<Stream> st;
  if (r == CUDA_SUCCESS) r = resolve_stream(a, c, stream, &st, false);
  if (r != CUDA_SUCCESS) return with_reason(r, a, why, why_len);
  enqueue_work(a, st, run, std::move(owned), (flags & ROTADAM_STANDIN_WORK_COLLECTIVE) != 0);
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
