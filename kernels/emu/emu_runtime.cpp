// emu_runtime.cpp: the scheduler behind cuda_emu.h (see that header for the execution model).
//
// One launch at a time (a process-wide mutex). Blocks run in order blockIdx.z, y, x. The threads of a block
// are fibers with their own stacks (kept between launches); the scheduler runs every runnable fiber once per
// pass, in ascending or descending linear thread order, each until it parks at a sync point or returns.
// After a pass it releases every warp whose live lanes all wait at a warp sync, else the block if every live
// thread waits at __syncthreads; if nothing can be released the launch fails with a message naming the
// kernel, the block and the threads that disagree.
//
// Fiber switches: on x86_64 a few instructions of assembly (below) save the stack pointer, the callee-saved
// registers of the System V ABI (rbx, rbp, r12-r15), MXCSR and the x87 control word, and nothing else.
// swapcontext would also save and restore the signal mask, one rt_sigprocmask system call per switch, which
// dominated the emulator's run time. Other architectures (or -DROTADAM_EMU_UCONTEXT) keep ucontext. Not
// checked here: a kernel that overflows its fiber's stack (256 KiB) corrupts the heap instead of faulting.
#include "cuda_emu.h"

#if defined(__x86_64__) && !defined(ROTADAM_EMU_UCONTEXT)
#define ROTADAM_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

constexpr size_t kStack = 256 * 1024;
constexpr unsigned kMaxThreads = 1024;

#if ROTADAM_EMU_ASM_SWITCH
// A suspended execution context: its saved stack pointer. Everything else it needs is on its stack.
struct Context {
  void* sp = nullptr;
};
#else
using Context = ucontext_t;
#endif

struct Fiber {
  Context ctx;
  char* stack = nullptr;
  State state = DONE;
  uint3 tid{0, 0, 0};
};

struct Launch {
  void (*thunk)(void*, const EmuArg*) = nullptr;
  void* fn = nullptr;
  const EmuArg* args = nullptr;
  Context sched;
  std::vector<Fiber> fibers;
  unsigned current = 0;
  std::vector<uint64_t> warp_buf;    // 32 slots per warp
  std::vector<unsigned char> smem;   // dynamic shared memory
};

std::mutex g_mutex;

// The linker's bounds of the section holding every __shared__ variable (cuda_emu.h).
extern "C" __attribute__((weak)) unsigned char __start_rotadam_emu_shared[];
extern "C" __attribute__((weak)) unsigned char __stop_rotadam_emu_shared[];

void poison_shared() {
  if (__start_rotadam_emu_shared != nullptr && __stop_rotadam_emu_shared != nullptr)
    std::memset(__start_rotadam_emu_shared, 0xff,
                static_cast<size_t>(__stop_rotadam_emu_shared - __start_rotadam_emu_shared));
}
Launch g_launch;

#if ROTADAM_EMU_ASM_SWITCH
}  // namespace

// rotadam_emu_switch(save, to): pushes the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in save->sp, loads to->sp and pops the same set from there. A
// fresh fiber's stack is prepared by start_fiber to look like one suspended here, returning into
// fiber_entry. Hidden: each copy of the emulator (a static library, a shared object) keeps its own.
extern "C" void rotadam_emu_switch(Context* save, const Context* to);
asm(R"(
    .text
    .p2align 4
    .globl rotadam_emu_switch
    .hidden rotadam_emu_switch
    .type rotadam_emu_switch, @function
rotadam_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq (%rsi), %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size rotadam_emu_switch, .-rotadam_emu_switch
)");

namespace {

void switch_to(Context* save, const Context* to) { rotadam_emu_switch(save, to); }

[[noreturn]] void fiber_entry();

// Lays out a fresh stack as rotadam_emu_switch leaves a suspended one: the FP control words of the
// scheduler, six zeroed callee-saved registers, then the address of fiber_entry for `ret`, then a null
// return address for fiber_entry itself. fiber_entry starts with rsp = 8 mod 16, as after a call.
void start_fiber(Fiber& f) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStack) & ~uintptr_t{15};
  uint64_t* slot = reinterpret_cast<uint64_t*>(top - 16);
  slot[0] = reinterpret_cast<uint64_t>(&fiber_entry);  // popped by `ret`
  slot[1] = 0;                                          // fiber_entry's (never used) return address
  uint64_t* regs = slot - 7;                            // FP control words, r15, r14, r13, r12, rbx, rbp
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  regs[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  for (int i = 1; i < 7; ++i) regs[i] = 0;
  f.ctx.sp = regs;
}
#else
void switch_to(Context* save, const Context* to) { swapcontext(save, to); }

void fiber_entry();

void start_fiber(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStack;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
}
#endif

void fiber_entry() {
  Launch& l = g_launch;
  l.thunk(l.fn, l.args);
  l.fibers[l.current].state = DONE;
  switch_to(&l.fibers[l.current].ctx, &l.sched);
  std::abort();  // a finished fiber is never resumed
}

void park(State s) {
  Launch& l = g_launch;
  Fiber& f = l.fibers[l.current];
  f.state = s;
  switch_to(&f.ctx, &l.sched);
}

void set_err(char* err, uint64_t len, const std::string& msg) {
  if (err == nullptr || len == 0) return;
  size_t n = msg.size() < len - 1 ? msg.size() : static_cast<size_t>(len - 1);
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

}  // namespace

extern "C" void rotadam_emu_syncthreads(void) { park(WAIT_BLOCK); }
extern "C" void rotadam_emu_syncwarp(void) { park(WAIT_WARP); }
extern "C" uint64_t* rotadam_emu_warp_buffer(void) {
  return &g_launch.warp_buf[(g_launch.current / 32) * 32];
}
extern "C" void* rotadam_emu_dynamic_smem(void) { return g_launch.smem.data(); }

extern "C" int rotadam_emu_check_args(const char* name, const EmuArg* args, uint64_t nargs,
                                      const uint64_t* sizes, uint64_t nsizes, char* err,
                                      uint64_t err_len) {
  if (nargs != nsizes) {
    set_err(err, err_len,
            std::string(name) + ": " + std::to_string(nargs) + " arguments given, the kernel takes " +
                std::to_string(nsizes));
    return 2;
  }
  for (uint64_t i = 0; i < nargs; ++i) {
    if (args[i].size != sizes[i]) {
      set_err(err, err_len,
              std::string(name) + ": argument " + std::to_string(i) + " has " +
                  std::to_string(args[i].size) + " bytes, the kernel's parameter has " +
                  std::to_string(sizes[i]));
      return 2;
    }
  }
  return 0;
}

extern "C" int rotadam_emu_run(const char* name, void (*thunk)(void*, const EmuArg*), void* fn,
                               const EmuArg* args, const EmuLaunchCfg* cfg, char* err, uint64_t err_len) {
  std::lock_guard<std::mutex> guard(g_mutex);
  Launch& l = g_launch;
  const unsigned bx = cfg->block[0], by = cfg->block[1], bz = cfg->block[2];
  const uint64_t nthreads64 = static_cast<uint64_t>(bx) * by * bz;
  if (nthreads64 == 0 || nthreads64 > kMaxThreads) {
    set_err(err, err_len,
            std::string(name) + ": block of " + std::to_string(nthreads64) +
                " threads (CUDA allows 1 to 1024)");
    return 3;
  }
  const unsigned nthreads = static_cast<unsigned>(nthreads64);
  if (l.fibers.size() < nthreads) l.fibers.resize(nthreads);
  for (unsigned i = 0; i < nthreads; ++i) {
    if (l.fibers[i].stack == nullptr) {
      l.fibers[i].stack = static_cast<char*>(std::malloc(kStack));
      if (l.fibers[i].stack == nullptr) {
        set_err(err, err_len, "emulator: out of memory for fiber stacks");
        return 4;
      }
    }
    l.fibers[i].tid = uint3{i % bx, (i / bx) % by, i / (bx * by)};
  }
  l.thunk = thunk;
  l.fn = fn;
  l.args = args;
  l.warp_buf.assign(((nthreads + 31) / 32) * 32, 0);
  l.smem.assign(cfg->smem, 0xff);
  blockDim = dim3{bx, by, bz};
  gridDim = dim3{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
  const bool desc = cfg->order != 0;

  for (unsigned gz = 0; gz < cfg->grid[2]; ++gz)
    for (unsigned gy = 0; gy < cfg->grid[1]; ++gy)
      for (unsigned gx = 0; gx < cfg->grid[0]; ++gx) {
        blockIdx = uint3{gx, gy, gz};
        std::fill(l.smem.begin(), l.smem.end(), 0xff);
        poison_shared();
        for (unsigned i = 0; i < nthreads; ++i) {
          Fiber& f = l.fibers[i];
          start_fiber(f);
          f.state = RUNNABLE;
        }
        for (;;) {
          // One pass: every runnable fiber runs to its next sync point, in the fixed order.
          for (unsigned k = 0; k < nthreads; ++k) {
            unsigned i = desc ? nthreads - 1 - k : k;
            Fiber& f = l.fibers[i];
            if (f.state != RUNNABLE) continue;
            l.current = i;
            threadIdx = f.tid;
            switch_to(&l.sched, &f.ctx);
          }
          // Release what can be released.
          unsigned done = 0, at_block = 0, at_warp = 0;
          for (unsigned i = 0; i < nthreads; ++i) {
            State s = l.fibers[i].state;
            done += s == DONE;
            at_block += s == WAIT_BLOCK;
            at_warp += s == WAIT_WARP;
          }
          if (done == nthreads) break;
          bool released = false;
          for (unsigned w = 0; w * 32 < nthreads; ++w) {
            unsigned lo = w * 32, hi = lo + 32 < nthreads ? lo + 32 : nthreads;
            bool all = true, any = false;
            for (unsigned i = lo; i < hi; ++i) {
              all = all && l.fibers[i].state == WAIT_WARP;
              any = any || l.fibers[i].state == WAIT_WARP;
            }
            if (any && all) {
              for (unsigned i = lo; i < hi; ++i) l.fibers[i].state = RUNNABLE;
              released = true;
            } else if (any) {
              unsigned odd = lo;
              while (odd < hi && l.fibers[odd].state == WAIT_WARP) ++odd;
              if (at_warp > 0 && at_block + done + at_warp == nthreads) {
                std::string why = l.fibers[odd].state == DONE ? "has exited" : "waits at __syncthreads";
                set_err(err, err_len,
                        std::string(name) + ": block (" + std::to_string(gx) + "," + std::to_string(gy) +
                            "," + std::to_string(gz) + "): warp " + std::to_string(w) +
                            " waits at a warp shuffle/__syncwarp but its thread " + std::to_string(odd) +
                            " " + why + " (divergent warp operation)");
                return 5;
              }
            }
          }
          if (released) continue;
          if (at_block + done == nthreads && at_block > 0) {
            if (done > 0) {
              unsigned gone = 0;
              while (l.fibers[gone].state != DONE) ++gone;
              set_err(err, err_len,
                      std::string(name) + ": block (" + std::to_string(gx) + "," + std::to_string(gy) +
                          "," + std::to_string(gz) + "): __syncthreads is waited on by " +
                          std::to_string(at_block) + " threads but thread " + std::to_string(gone) +
                          " has exited (a barrier not reached by every thread)");
              return 5;
            }
            for (unsigned i = 0; i < nthreads; ++i) l.fibers[i].state = RUNNABLE;
            continue;
          }
          set_err(err, err_len, std::string(name) + ": emulator deadlock (no barrier can complete)");
          return 5;
        }
      }
  return 0;
}
