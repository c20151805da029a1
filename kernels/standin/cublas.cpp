// cublas.cpp: a stand-in for the cuBLAS subset the CUDA backend uses (libcublas.so): handles, their
// stream, and single-precision GEMMs (cublasSgemm_v2, cublasSgemmStridedBatched, cublasGemmEx with fp32 or
// bf16 operands and an fp32 result), computed on the host when the stream they were queued on runs.
//
// Arguments are validated as cuBLAS documents it (handle; transa/transb in {N, T, C}; m, n, k, batchCount
// >= 0; lda >= max(1, rows of A as stored), ldb likewise, ldc >= max(1, m); alpha and beta non-NULL host
// pointers, the default pointer mode, the only one implemented), then beyond what cuBLAS checks: every
// operand's whole extent (lda * (cols - 1) + rows elements, plus |stride| * (batchCount - 1) when batched)
// must lie inside one live device allocation of the current context — otherwise a GPU would fault
// (CUDA_ERROR_ILLEGAL_ADDRESS, the context becomes unusable) or silently read a neighbour — and C must
// not overlap A or B. With beta == 0, C is not read (device memory starts NaN-poisoned).
//
// Results: C = alpha * sum_l op(A)[i,l] * op(B)[l,j] + beta * C, each sum accumulated in fp32 in order
// l = 0, 1, …, k-1 with a rounding after every multiply and every add (no FMA), whatever the blocking or
// the vector width, so runs are bit-reproducible and independent of the machine. A GPU sums in another
// order (and cuBLAS may use TF32 or split-k): results agree to fp32 rounding, not bit for bit.
// What it cannot check: the pointer mode (alpha and beta are read as host floats), math modes and
// workspaces (not implemented, so not exported), and whether a GPU's cuBLAS would pick an algorithm that
// needs more memory than is free.
#include "standin.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

typedef struct cublasContext* cublasHandle_t;

enum cublasStatus_t : unsigned int {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};

namespace {

enum Op : int { OP_N = 0, OP_T = 1, OP_C = 2 };
constexpr int CUDA_R_32F = 0;
constexpr int CUDA_R_16BF = 14;
constexpr int CUBLAS_COMPUTE_32F = 68;
constexpr int CUBLAS_GEMM_DEFAULT = -1;
constexpr int CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99;

const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_?";
}

// A cuBLAS handle: the context it was created in and the stream its work goes to.
struct Handle {
  uint64_t serial = 0;
  CUcontext ctx = nullptr;
  CUstream stream = nullptr;  // NULL: the legacy default stream
};

// The library's state: live handles, behind one mutex. (Memory and streams are libcuda.so's.)
struct BlasState {
  std::mutex mu;
  std::map<cublasHandle_t, std::unique_ptr<Handle>> handles;
  uint64_t next_serial = 1;
};

BlasState& blas_state() {
  static BlasState* s = new BlasState();  // never destroyed (dlclose / reopen)
  return *s;
}

cublasStatus_t fail(const char* call, cublasStatus_t status, const std::string& msg) {
  rotadam_standin_report((std::string(call) + ": " + msg + " [" + status_name(status) + "]").c_str());
  return status;
}

// The handle's stream, or NOT_INITIALIZED for a handle that is not live.
cublasStatus_t handle_stream(const char* call, cublasHandle_t h, CUstream* stream) {
  BlasState& s = blas_state();
  std::lock_guard<std::mutex> g(s.mu);
  auto it = s.handles.find(h);
  if (it == s.handles.end()) {
    char b[64];
    std::snprintf(b, sizeof b, "%p", static_cast<void*>(h));
    return fail(call, CUBLAS_STATUS_NOT_INITIALIZED,
                std::string("handle ") + b + " is not live (never created by cublasCreate_v2, or destroyed)");
  }
  if (stream != nullptr) *stream = it->second->stream;
  return CUBLAS_STATUS_SUCCESS;
}

// ---- the computation ------------------------------------------------------------------------------------
struct Operand {
  const unsigned char* ptr = nullptr;
  int type = CUDA_R_32F;  // CUDA_R_32F or CUDA_R_16BF
  int64_t ld = 0;
  int64_t stride = 0;  // elements between batches
  size_t elem() const { return type == CUDA_R_16BF ? 2 : 4; }
};

struct GemmJob {
  int opa = OP_N, opb = OP_N;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  float alpha = 1, beta = 0;
  Operand a, b;
  float* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
};

}  // namespace

// acc[c][i] = acc[c][i] + b[c] * a[i] for c < cols, i < len (no FMA: -ffp-contract=off). Cloned for AVX2:
// the same operations per element, so the same bits, on any machine. (Outside the anonymous namespace:
// GCC clones only functions with linkage; -fvisibility=hidden keeps it local to the library.)
__attribute__((target_clones("avx2", "default"))) void rotadam_standin_axpy_cols(float* acc, int64_t acc_stride,
                                                                                 const float* a, int64_t len,
                                                                                 const float* b, int64_t b_stride,
                                                                                 int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) {
    const float bc = b[c * b_stride];
    float* __restrict out = acc + c * acc_stride;
    for (int64_t i = 0; i < len; ++i) out[i] = out[i] + bc * a[i];
  }
}

namespace {

// out[t] = o[start + t * step] as fp32, t < count.
void load(const Operand& o, int64_t start, int64_t step, int64_t count, float* out) {
  if (o.type == CUDA_R_32F) {
    const float* p = reinterpret_cast<const float*>(o.ptr) + start;
    if (step == 1)
      std::memcpy(out, p, static_cast<size_t>(count) * 4);
    else
      for (int64_t t = 0; t < count; ++t) out[t] = p[t * step];
  } else {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(o.ptr) + start;
    for (int64_t t = 0; t < count; ++t) {
      const uint32_t u = static_cast<uint32_t>(p[t * step]) << 16;
      std::memcpy(&out[t], &u, 4);
    }
  }
}

// One batch entry. op(A) is packed as k rows of m (a_t[l][i]) and op(B) as n rows of k (b_t[j][l]); C is
// accumulated in blocks of 256 rows x 4 columns, each column contiguous like C itself.
void gemm_one(const GemmJob& j, const Operand& A, const Operand& B, float* C) {
  const int64_t m = j.m, n = j.n, k = j.k;
  const bool product = k > 0 && j.alpha != 0.0f;  // else A and B are not read (BLAS semantics)
  std::vector<float> a_t, b_t;
  if (product) {
    a_t.resize(static_cast<size_t>(k * m));
    b_t.resize(static_cast<size_t>(n * k));
    for (int64_t l = 0; l < k; ++l)
      load(A, j.opa == OP_N ? l * A.ld : l, j.opa == OP_N ? 1 : A.ld, m, &a_t[static_cast<size_t>(l * m)]);
    for (int64_t c = 0; c < n; ++c)
      load(B, j.opb == OP_N ? c * B.ld : c, j.opb == OP_N ? 1 : B.ld, k, &b_t[static_cast<size_t>(c * k)]);
  }
  constexpr int64_t MB = 256, NB = 4;
  std::vector<float> acc(static_cast<size_t>(MB * NB));
  for (int64_t i0 = 0; i0 < m; i0 += MB) {
    const int64_t im = std::min(MB, m - i0);
    for (int64_t j0 = 0; j0 < n; j0 += NB) {
      const int64_t jn = std::min(NB, n - j0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      if (product)
        for (int64_t l = 0; l < k; ++l)
          rotadam_standin_axpy_cols(acc.data(), MB, &a_t[static_cast<size_t>(l * m + i0)], im,
                                    &b_t[static_cast<size_t>(j0 * k + l)], k, jn);
      for (int64_t c = 0; c < jn; ++c) {
        float* out = C + (j0 + c) * j.ldc + i0;
        const float* sum = &acc[static_cast<size_t>(c * MB)];
        if (j.beta == 0.0f)
          for (int64_t i = 0; i < im; ++i) out[i] = j.alpha * sum[i];
        else
          for (int64_t i = 0; i < im; ++i) out[i] = j.alpha * sum[i] + j.beta * out[i];
      }
    }
  }
}

int run_gemm(void* payload, char*, uint64_t) {
  const GemmJob& j = *static_cast<const GemmJob*>(payload);
  for (int64_t b = 0; b < j.batch; ++b) {
    Operand A = j.a, B = j.b;
    A.ptr += static_cast<int64_t>(A.elem()) * A.stride * b;
    B.ptr += static_cast<int64_t>(B.elem()) * B.stride * b;
    gemm_one(j, A, B, j.c + j.stride_c * b);
  }
  return 0;
}

void release_gemm(void* payload) { delete static_cast<GemmJob*>(payload); }

// [first, last) bytes an operand of rows x cols (column-major, leading dimension ld) spans over all batches.
struct Extent {
  uint64_t first = 0, last = 0;
};
Extent extent(const Operand& o, int64_t rows, int64_t cols, int64_t batch) {
  const int64_t one = (cols - 1) * o.ld + rows;  // elements of one matrix
  const int64_t span = o.stride * (batch - 1);
  const int64_t lo = std::min<int64_t>(0, span), hi = std::max<int64_t>(0, span);
  const uint64_t base = reinterpret_cast<uint64_t>(o.ptr);
  return {base + static_cast<uint64_t>(lo * static_cast<int64_t>(o.elem())),
          base + static_cast<uint64_t>((hi + one) * static_cast<int64_t>(o.elem()))};
}

const char* op_name(int op) { return op == OP_N ? "N" : op == OP_T ? "T" : "C"; }

// Validates and queues one (batched) GEMM; the shared body of the three exported GEMMs.
cublasStatus_t gemm(const char* call, cublasHandle_t h, int transa, int transb, int m, int n, int k, const float* alpha,
                    Operand A, Operand B, const float* beta, float* C, int64_t ldc, int64_t stride_c, int batch) {
  CUstream stream = nullptr;
  if (cublasStatus_t r = handle_stream(call, h, &stream)) return r;
  const std::string dims = "m = " + std::to_string(m) + ", n = " + std::to_string(n) + ", k = " + std::to_string(k);
  for (int op : {transa, transb})
    if (op != OP_N && op != OP_T && op != OP_C)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE, "transa/transb = " + std::to_string(op) + " is not N, T or C");
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, dims + ", batchCount = " + std::to_string(batch) + ": negative");
  const int64_t a_rows = transa == OP_N ? m : k, a_cols = transa == OP_N ? k : m;
  const int64_t b_rows = transb == OP_N ? k : n, b_cols = transb == OP_N ? n : k;
  struct Ld {
    const char* name;
    int64_t ld, rows;
    const char* rows_are;
  } lds[] = {{"lda", A.ld, a_rows, transa == OP_N ? "m" : "k"},
             {"ldb", B.ld, b_rows, transb == OP_N ? "k" : "n"},
             {"ldc", ldc, m, "m"}};
  for (const Ld& l : lds)
    if (l.ld < std::max<int64_t>(1, l.rows))
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  std::string(l.name) + " = " + std::to_string(l.ld) + " < max(1, " + l.rows_are + " = " +
                      std::to_string(l.rows) + ") (" + dims + ", transa = " + op_name(transa) +
                      ", transb = " + op_name(transb) + ")");
  if (alpha == nullptr || beta == nullptr) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is NULL");
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;

  // Every operand the GEMM touches must lie inside one live device allocation.
  const Operand Cop{reinterpret_cast<const unsigned char*>(C), CUDA_R_32F, ldc, stride_c};
  struct Use {
    const char* name;
    const Operand* o;
    int64_t rows, cols;
    bool used;
  } uses[] = {{"A", &A, a_rows, a_cols, k > 0}, {"B", &B, b_rows, b_cols, k > 0}, {"C", &Cop, m, n, true}};
  Extent ext[3];
  for (int i = 0; i < 3; ++i) {
    const Use& u = uses[i];
    if (!u.used) continue;
    ext[i] = extent(*u.o, u.rows, u.cols, batch);
    char why[1024] = {0};
    std::string what = std::string(u.name) + " (" + std::to_string(u.rows) + " x " + std::to_string(u.cols) +
                       ", ld " + std::to_string(u.o->ld);
    if (batch > 1) what += ", stride " + std::to_string(u.o->stride) + ", " + std::to_string(batch) + " batches";
    what += ")";
    const unsigned r =
        rotadam_standin_check_device_range(ext[i].first, ext[i].last - ext[i].first, what.c_str(), why, sizeof why);
    if (r != 0) {
      const std::string line = std::string(call) + ": " + why + " [CUDA_ERROR_ILLEGAL_ADDRESS, " +
                               status_name(CUBLAS_STATUS_EXECUTION_FAILED) + "]";
      rotadam_standin_fault(r, line.c_str());
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  }
  for (int i = 0; i < 2; ++i)
    if (uses[i].used && ext[i].first < ext[2].last && ext[2].first < ext[i].last)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  std::string("C overlaps ") + uses[i].name + " (undefined in cuBLAS; " + dims + ")");

  auto* job = new GemmJob();
  job->opa = transa == OP_N ? OP_N : OP_T;
  job->opb = transb == OP_N ? OP_N : OP_T;
  job->m = m;
  job->n = n;
  job->k = k;
  job->batch = batch;
  job->alpha = *alpha;  // host pointer mode: read now
  job->beta = *beta;
  job->a = A;
  job->b = B;
  job->c = C;
  job->ldc = ldc;
  job->stride_c = stride_c;
  char why[1024] = {0};
  const std::string what =
      std::string(call) + " (" + dims + (batch > 1 ? ", " + std::to_string(batch) + " batches" : "") + ")";
  if (rotadam_standin_enqueue(stream, what.c_str(), run_gemm, release_gemm, job, why, sizeof why) != 0)
    return CUBLAS_STATUS_EXECUTION_FAILED;  // the driver recorded why (a failed context, a dead stream)
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

STANDIN_API cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  const char* call = "cublasCreate_v2";
  if (handle == nullptr) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "handle is NULL");
  CUcontext ctx = nullptr;
  if (cuCtxGetCurrent(&ctx) != CUDA_SUCCESS || ctx == nullptr)
    return fail(call, CUBLAS_STATUS_NOT_INITIALIZED, "no current CUDA context on this thread");
  BlasState& s = blas_state();
  std::lock_guard<std::mutex> g(s.mu);
  auto h = std::make_unique<Handle>();
  h->serial = s.next_serial++;
  h->ctx = ctx;
  cublasHandle_t key = reinterpret_cast<cublasHandle_t>(h.get());
  s.handles[key] = std::move(h);
  *handle = key;
  return CUBLAS_STATUS_SUCCESS;
}

STANDIN_API cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (cublasStatus_t r = handle_stream("cublasDestroy_v2", handle, nullptr)) return r;
  BlasState& s = blas_state();
  std::lock_guard<std::mutex> g(s.mu);
  s.handles.erase(handle);  // queued GEMMs keep copies of everything they need
  return CUBLAS_STATUS_SUCCESS;
}

STANDIN_API cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, CUstream stream) {
  const char* call = "cublasSetStream_v2";
  if (cublasStatus_t r = handle_stream(call, handle, nullptr)) return r;
  char why[1024] = {0};
  if (rotadam_standin_check_stream(stream, why, sizeof why) != 0) return fail(call, CUBLAS_STATUS_INVALID_VALUE, why);
  BlasState& s = blas_state();
  std::lock_guard<std::mutex> g(s.mu);
  auto it = s.handles.find(handle);
  if (it != s.handles.end()) it->second->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

STANDIN_API cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, CUstream* stream) {
  const char* call = "cublasGetStream_v2";
  if (stream == nullptr) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "streamId is NULL");
  return handle_stream(call, handle, stream);
}

STANDIN_API cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, int transa, int transb, int m, int n, int k,
                                          const float* alpha, const float* A, int lda, const float* B, int ldb,
                                          const float* beta, float* C, int ldc) {
  Operand a{reinterpret_cast<const unsigned char*>(A), CUDA_R_32F, lda, 0};
  Operand b{reinterpret_cast<const unsigned char*>(B), CUDA_R_32F, ldb, 0};
  return gemm("cublasSgemm_v2", handle, transa, transb, m, n, k, alpha, a, b, beta, C, ldc, 0, 1);
}

STANDIN_API cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, int transa, int transb, int m, int n,
                                                     int k, const float* alpha, const float* A, int lda,
                                                     long long stride_a, const float* B, int ldb, long long stride_b,
                                                     const float* beta, float* C, int ldc, long long stride_c,
                                                     int batch) {
  Operand a{reinterpret_cast<const unsigned char*>(A), CUDA_R_32F, lda, stride_a};
  Operand b{reinterpret_cast<const unsigned char*>(B), CUDA_R_32F, ldb, stride_b};
  return gemm("cublasSgemmStridedBatched", handle, transa, transb, m, n, k, alpha, a, b, beta, C, ldc, stride_c, batch);
}

STANDIN_API cublasStatus_t cublasGemmEx(cublasHandle_t handle, int transa, int transb, int m, int n, int k,
                                        const void* alpha, const void* A, int a_type, int lda, const void* B,
                                        int b_type, int ldb, const void* beta, void* C, int c_type, int ldc,
                                        int compute_type, int algo) {
  const char* call = "cublasGemmEx";
  if (cublasStatus_t r = handle_stream(call, handle, nullptr)) return r;
  const bool types_ok = a_type == b_type && (a_type == CUDA_R_32F || a_type == CUDA_R_16BF) && c_type == CUDA_R_32F;
  if (!types_ok || compute_type != CUBLAS_COMPUTE_32F)
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                "Atype " + std::to_string(a_type) + ", Btype " + std::to_string(b_type) + ", Ctype " +
                    std::to_string(c_type) + ", computeType " + std::to_string(compute_type) +
                    ": the stand-in implements A = B = CUDA_R_16BF (14) or CUDA_R_32F (0), C = CUDA_R_32F, "
                    "CUBLAS_COMPUTE_32F (68)");
  if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP)
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                "algo " + std::to_string(algo) + ": the stand-in implements CUBLAS_GEMM_DEFAULT (-1) and "
                "CUBLAS_GEMM_DEFAULT_TENSOR_OP (99)");
  Operand a{static_cast<const unsigned char*>(A), a_type, lda, 0};
  Operand b{static_cast<const unsigned char*>(B), b_type, ldb, 0};
  return gemm(call, handle, transa, transb, m, n, k, static_cast<const float*>(alpha), a, b,
              static_cast<const float*>(beta), static_cast<float*>(C), ldc, 0, 1);
}
