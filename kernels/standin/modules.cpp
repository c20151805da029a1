// modules.cpp: the driver stand-in's modules and launches: cuModuleLoadData reads PTX text (ptx.cpp) and checks
// its version, target and address size; cuModuleGetFunction binds an .entry by name to the emulator's kernel
// (the generated table) with the parameter sizes checked against the C++ signature; cuLaunchKernel checks the
// geometry, copies the bytes each PTX parameter declares, checks every pointer argument and queues the kernel
// for the emulator. driver.h has the overview of the stand-in.
#include "driver.h"

#include <cstring>

namespace rotadam_standin {
namespace {

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
}  // namespace rotadam_standin

using namespace rotadam_standin;

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
