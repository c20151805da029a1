// report.cpp: the driver stand-in's one State and this thread's view of it (current context, last error, the
// work it is running), the error report (each misuse counted, printed to stderr once, kept as this thread's
// last error; sticky failures of a context), and the exported rotadam_standin_* functions: the report, the
// last error and the entry-point list for the tests, and the checks, the work queue and the report that
// libcublas.so uses. driver.h has the overview of the stand-in.
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
