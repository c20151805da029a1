// streams.cpp: the driver stand-in's streams (the legacy default stream, per-thread default streams, created
// ones), the per-stream queue of work (launches, copies, memsets, cuBLAS calls, NCCL collectives) with the
// legacy stream's implicit synchronization, running that work where a GPU would guarantee completion to the
// host (stream, event and context synchronization, queries) — waiting, with the lock released, for
// collectives whose peers have not reached them (driver.h) — and events (record, wait, elapsed time).
// driver.h has the overview of the stand-in.
#include "driver.h"

#include <algorithm>
#include <chrono>

namespace rotadam_standin {

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

CUresult resolve_stream(Api& a, Context* c, CUstream h, std::shared_ptr<Stream>* out, bool current) {
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
    return a.fail(CUDA_ERROR_INVALID_HANDLE, it->second->name() + " belongs to " + it->second->ctx->name() +
                                                 ", not to " + (current ? "the current context" : c->name()));
  *out = it->second;
  return CUDA_SUCCESS;
}

namespace {

// Queues `w` on `st` (enqueue, enqueue_status), after the legacy stream's implicit synchronization.
uint64_t push_work(State& s, const std::shared_ptr<Stream>& st, Work w) {
  w.seq = s.next_seq++;
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
  s.cv.notify_all();  // a thread waiting for a collective may now be able to run it
  return seq;
}

}  // namespace

uint64_t enqueue(State& s, const std::shared_ptr<Stream>& st, std::string what, std::function<std::string()> run,
                 std::vector<Dep> deps, HostRange host) {
  Work w;
  w.what = std::move(what);
  w.run = [run = std::move(run)](std::string* err) {
    *err = run();
    return err->empty() ? kWorkDone : kWorkFailed;
  };
  w.deps = std::move(deps);
  w.host = host;
  return push_work(s, st, std::move(w));
}

uint64_t enqueue_status(State& s, const std::shared_ptr<Stream>& st, std::string what,
                        std::function<int(std::string*)> run, bool collective) {
  Work w;
  w.what = std::move(what);
  w.run = std::move(run);
  w.collective = collective;
  return push_work(s, st, std::move(w));
}

namespace {

// Runs the work queued on `st` with sequence numbers up to `upto`, each after what it waits for, and never
// waits: returns false when an item (or what it waits for) is not ready yet, which then stays at the front of
// its queue. A failure makes the context sticky; a failed context discards what is left (a GPU runs nothing
// more in it).
bool run_until(Api& a, Stream& st, uint64_t upto) {
  while (!st.queue.empty() && st.queue.front().seq <= upto) {
    // What it waits for runs first, while it stays at the front of its queue (those are earlier items of
    // other streams: nothing in there touches this queue's front).
    const std::vector<Dep> deps = st.queue.front().deps;
    for (const Dep& d : deps)
      if (!run_until(a, *d.stream, d.seq)) return false;
    Work w = std::move(st.queue.front());
    st.queue.pop_front();
    Context* c = st.ctx;
    if (c->sticky != CUDA_SUCCESS) continue;
    install_fault_handler(a.s);
    t_running = w.what.c_str();
    std::string err;
    const int status = w.run(&err);
    t_running = nullptr;
    if (status == kWorkNotReady) {
      st.queue.push_front(std::move(w));
      return false;
    }
    if (w.collective) a.s.cv.notify_all();  // its peers in this process may be waiting for it
    if (status != kWorkDone)
      make_sticky(a.s, c, CUDA_ERROR_LAUNCH_FAILED,
                  std::string(a.name) + ": " + w.what + " failed: " + (err.empty() ? "failed" : err) + " [" +
                      error_name(CUDA_ERROR_LAUNCH_FAILED) + "]");
  }
  return true;
}

// Runs, on every stream of every active context, the work up to its first queued collective (that one
// included): while one collective waits for its peers, theirs (queued on other devices, perhaps by this very
// thread inside ncclGroupStart/ncclGroupEnd) can then reach it. Returns whether any work item ran to an end.
bool run_other_collectives(Api& a) {
  bool progress = false;
  for (const auto& c : a.s.contexts) {
    if (c->refcount == 0) continue;
    std::vector<std::shared_ptr<Stream>> all = c->streams;
    for (const auto& st : all) {
      const auto it = std::find_if(st->queue.begin(), st->queue.end(), [](const Work& w) { return w.collective; });
      if (it == st->queue.end()) continue;
      const uint64_t first = st->queue.front().seq, upto = it->seq;
      run_until(a, *st, upto);
      progress |= st->queue.empty() || st->queue.front().seq != first;
    }
  }
  return progress;
}

// Runs `attempt` (which runs queued work without waiting and says whether all it asked for ran) until it
// succeeds; while it does not: the other collectives run, and if that makes no progress either the call
// waits (the lock released, driver.h) — or, without `wait`, gives up and returns false.
bool drive(Api& a, const std::function<bool()>& attempt, bool wait) {
  for (;;) {
    if (attempt()) return true;
    if (run_other_collectives(a)) continue;
    if (!wait) return false;
    a.s.cv.wait_for(a.lock, kNotReadyPoll);
  }
}

// Drops streams that were destroyed and have nothing left to run.
void collect_streams(Context* c) {
  auto& v = c->streams;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [](const std::shared_ptr<Stream>& st) { return st->destroyed && st->queue.empty(); }),
          v.end());
}

}  // namespace

CUresult sync_context(Api& a, Context* c) {
  drive(
      a,
      [&a, c] {
        bool done = true;
        std::vector<std::shared_ptr<Stream>> all = c->streams;
        for (const auto& st : all) done &= run_until(a, *st, st->last_seq);
        return done;
      },
      true);
  collect_streams(c);
  return c->sticky;
}

void run_host_users(Api& a, uint64_t p, uint64_t n) {
  drive(
      a,
      [&a, p, n] {
        bool done = true;
        for (const auto& c : a.s.contexts) {
          if (c->refcount == 0) continue;  // an inactive context has no queued work
          std::vector<std::shared_ptr<Stream>> all = c->streams;
          for (const auto& st : all) {
            uint64_t upto = 0;  // the last queued item on st that touches the range (queues are in seq order)
            for (const Work& w : st->queue)
              if (w.host.overlaps(p, n)) upto = w.seq;
            if (upto != 0) done &= run_until(a, *st, upto);
          }
          collect_streams(c.get());
        }
        return done;
      },
      true);
}

CUresult sync_stream(Api& a, const std::shared_ptr<Stream>& st, uint64_t upto) {
  drive(a, [&a, &st, upto] { return run_until(a, *st, upto); }, true);
  return st->ctx->sticky;
}

bool try_stream(Api& a, const std::shared_ptr<Stream>& st, uint64_t upto) {
  return drive(a, [&a, &st, upto] { return run_until(a, *st, upto); }, false);
}

CUresult after_run(Api& a, Context* c) {
  if (c->sticky == CUDA_SUCCESS) return CUDA_SUCCESS;
  if (t_last_error != c->sticky_msg) a.sticky(c);  // unless this very call failed it
  return c->sticky;
}

}  // namespace rotadam_standin

using namespace rotadam_standin;

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
  // the stand-in finishes what is asked about, unless a collective in it waits for its peers
  if (!try_stream(a, st, st->last_seq) && c->sticky == CUDA_SUCCESS) return CUDA_ERROR_NOT_READY;
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
  // the stand-in finishes what is asked about, unless a collective in it waits for its peers
  if (ev->recorded && !try_stream(a, ev->stream, ev->seq) && ev->ctx->sticky == CUDA_SUCCESS)
    return CUDA_ERROR_NOT_READY;
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
