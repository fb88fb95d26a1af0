#pragma once
// cuBLASLt wrapper: one handle and workspace per context, and a cache of matmul plans
// (descriptors, layouts and the heuristic's algorithm) keyed by the column-major problem:
// shape, transposes, leading dims, dtypes, epilogue and operand alignment. The first call
// of a shape builds its plan; every later call only sets the pointer attributes and runs.
//
// This layer is column-major like cuBLAS; ops/cuda/gemm.cuh maps the library's row-major
// contract onto it.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <utility>
#include <unordered_map>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

// One column-major problem D = alpha op(A) op(B) + beta C (C == D), with an epilogue.
struct LtProblem {
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  std::int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  std::int64_t a_rows = 0, a_cols = 0, lda = 0;  // stored layout of A
  const void* b = nullptr;
  std::int64_t b_rows = 0, b_cols = 0, ldb = 0;  // stored layout of B
  void* c = nullptr;
  std::int64_t ldc = 0;
  cudaDataType_t in_type = CUDA_R_32F, out_type = CUDA_R_32F, scale_type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // BIAS*, BGRAD*: the bias (or bias-gradient output) vector
  void* aux = nullptr;         // *_AUX*, DGELU: the auxiliary matrix
  std::int64_t ldaux = 0;
  const void* alpha = nullptr;
  const void* beta = nullptr;
};

// The value type of every cuBLASLt attribute the library sets, as cuBLASLt declares it. A value
// of another size is answered with CUBLAS_STATUS_INVALID_VALUE (the alignment preferences are
// uint32_t, not uint64_t); setting through these traits makes the size right by construction,
// and tests/cuda_host/ checks each trait against the size cuBLASLt reports (no GPU needed).
template <cublasLtMatmulPreferenceAttributes_t A>
struct LtPrefAttr;
template <cublasLtMatmulDescAttributes_t A>
struct LtDescAttr;
#define MDLM_LT_ATTR_TYPE(Trait, attribute, value_type) \
  template <>                                           \
  struct Trait<attribute> {                             \
    using type = value_type;                            \
  }
MDLM_LT_ATTR_TYPE(LtPrefAttr, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, std::uint64_t);
MDLM_LT_ATTR_TYPE(LtPrefAttr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, std::uint32_t);
MDLM_LT_ATTR_TYPE(LtPrefAttr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, std::uint32_t);
MDLM_LT_ATTR_TYPE(LtPrefAttr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, std::uint32_t);
MDLM_LT_ATTR_TYPE(LtPrefAttr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, std::uint32_t);
MDLM_LT_ATTR_TYPE(LtDescAttr, CUBLASLT_MATMUL_DESC_TRANSA, std::int32_t);
MDLM_LT_ATTR_TYPE(LtDescAttr, CUBLASLT_MATMUL_DESC_TRANSB, std::int32_t);
MDLM_LT_ATTR_TYPE(LtDescAttr, CUBLASLT_MATMUL_DESC_EPILOGUE, std::uint32_t);
MDLM_LT_ATTR_TYPE(LtDescAttr, CUBLASLT_MATMUL_DESC_BIAS_POINTER, const void*);
MDLM_LT_ATTR_TYPE(LtDescAttr, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, void*);
MDLM_LT_ATTR_TYPE(LtDescAttr, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, std::int64_t);
#undef MDLM_LT_ATTR_TYPE

template <cublasLtMatmulPreferenceAttributes_t A>
void lt_set(cublasLtMatmulPreference_t pref, typename LtPrefAttr<A>::type v) {
  MDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, A, &v, sizeof v));
}
template <cublasLtMatmulDescAttributes_t A>
void lt_set(cublasLtMatmulDesc_t desc, typename LtDescAttr<A>::type v) {
  MDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, A, &v, sizeof v));
}

// Alignment class of a pointer: the largest power of two up to 256 that divides it.
inline std::uint32_t lt_alignment(const void* p) {
  auto v = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t a = 256;
  while (a > 1 && (v % a) != 0) a /= 2;
  return a;
}

// Whether cuBLASLt can fuse the problem's epilogue at all: the GELU_AUX / DGELU epilogues need
// an aux leading dimension divisible by 8 (and an aux pointer aligned to 16 bytes); otherwise
// the product runs plain and a kernel applies the epilogue.
inline bool lt_epilogue_fusable(const LtProblem& p) {
  const bool uses_aux = p.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || p.epilogue == CUBLASLT_EPILOGUE_GELU_AUX ||
                        p.epilogue == CUBLASLT_EPILOGUE_DGELU || p.epilogue == CUBLASLT_EPILOGUE_DGELU_BGRAD;
  if (!uses_aux) return true;
  return p.aux != nullptr && p.ldaux % 8 == 0 && lt_alignment(p.aux) >= 16;
}

// The descriptors, layouts and preference of one problem: everything of a plan but the
// heuristic's choice. Built without a handle or a device (these calls need no driver), so
// tests/cuda_host/ builds them on the CPU for every problem the library issues.
struct LtDescriptors {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr, b_layout = nullptr, c_layout = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;

  LtDescriptors() = default;
  LtDescriptors(const LtDescriptors&) = delete;
  LtDescriptors& operator=(const LtDescriptors&) = delete;
  LtDescriptors(LtDescriptors&& o) noexcept { *this = std::move(o); }
  LtDescriptors& operator=(LtDescriptors&& o) noexcept {
    if (this != &o) {
      release();
      desc = std::exchange(o.desc, nullptr);
      a_layout = std::exchange(o.a_layout, nullptr);
      b_layout = std::exchange(o.b_layout, nullptr);
      c_layout = std::exchange(o.c_layout, nullptr);
      pref = std::exchange(o.pref, nullptr);
    }
    return *this;
  }
  ~LtDescriptors() { release(); }

 private:
  void release() noexcept {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (a_layout) cublasLtMatrixLayoutDestroy(a_layout);
    if (b_layout) cublasLtMatrixLayoutDestroy(b_layout);
    if (c_layout) cublasLtMatrixLayoutDestroy(c_layout);
    if (desc) cublasLtMatmulDescDestroy(desc);
    pref = nullptr, a_layout = b_layout = c_layout = nullptr, desc = nullptr;
  }
};

inline LtDescriptors lt_describe(const LtProblem& p, std::uint64_t workspace_bytes) {
  LtDescriptors d;
  MDLM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.desc, p.compute, p.scale_type));
  lt_set<CUBLASLT_MATMUL_DESC_TRANSA>(d.desc, p.transa);
  lt_set<CUBLASLT_MATMUL_DESC_TRANSB>(d.desc, p.transb);
  lt_set<CUBLASLT_MATMUL_DESC_EPILOGUE>(d.desc, p.epilogue);
  if (p.aux != nullptr) lt_set<CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD>(d.desc, p.ldaux);
  // Pointer attributes must be set before the heuristic when the epilogue uses them.
  if (p.bias != nullptr) lt_set<CUBLASLT_MATMUL_DESC_BIAS_POINTER>(d.desc, p.bias);
  if (p.aux != nullptr) lt_set<CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER>(d.desc, p.aux);
  MDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a_layout, p.in_type, static_cast<std::uint64_t>(p.a_rows),
                                               static_cast<std::uint64_t>(p.a_cols), p.lda));
  MDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b_layout, p.in_type, static_cast<std::uint64_t>(p.b_rows),
                                               static_cast<std::uint64_t>(p.b_cols), p.ldb));
  MDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c_layout, p.out_type, static_cast<std::uint64_t>(p.m),
                                               static_cast<std::uint64_t>(p.n), p.ldc));
  MDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
  lt_set<CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES>(d.pref, workspace_bytes);
  const std::uint32_t align_c = lt_alignment(p.c);
  lt_set<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES>(d.pref, lt_alignment(p.a));
  lt_set<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES>(d.pref, lt_alignment(p.b));
  lt_set<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES>(d.pref, align_c);
  lt_set<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES>(d.pref, align_c);
  return d;
}

class LtGemm {
 public:
  static constexpr std::size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends for Hopper
  // At most this many plans are kept; a new shape past it starts the cache afresh. A training
  // step takes a fixed set of shapes (the output head's rows are padded to a multiple of 128,
  // diffusion/masked_diffusion.hpp), far fewer than this, so the cap only bounds misuse.
  static constexpr std::size_t kMaxPlans = 4096;

  explicit LtGemm(cudaStream_t stream) : stream_(stream) {
    MDLM_CUBLAS_CHECK(cublasLtCreate(&handle_));
    MDLM_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  ~LtGemm() {
    plans_.clear();
    cudaFree(workspace_);
    cublasLtDestroy(handle_);
  }

  // Runs the problem. Returns false (and does nothing) when cuBLASLt has no algorithm for it,
  // e.g. an epilogue with an unsupported aux leading dimension; the caller then falls back.
  bool run(const LtProblem& p) {
    if (!lt_epilogue_fusable(p)) return false;
    Plan& plan = plan_for(p);
    if (!plan.has_algo) return false;
    if (p.bias != nullptr) lt_set<CUBLASLT_MATMUL_DESC_BIAS_POINTER>(plan.d.desc, p.bias);
    if (p.aux != nullptr) lt_set<CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER>(plan.d.desc, p.aux);
    MDLM_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.d.desc, p.alpha, p.a, plan.d.a_layout, p.b, plan.d.b_layout, p.beta,
                                     p.c, plan.d.c_layout, p.c, plan.d.c_layout, &plan.algo, workspace_,
                                     kWorkspaceBytes, stream_));
    return true;
  }

  std::size_t plan_count() const { return plans_.size(); }

 private:
  struct Key {
    int transa, transb;
    std::int64_t m, n, k, lda, ldb, ldc, ldaux;
    int in_type, out_type, scale_type, compute, epilogue;
    std::uint32_t align_a, align_b, align_c, align_aux, align_bias;  // pointer alignment classes (bytes, <= 256)
    bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      const auto* bytes = reinterpret_cast<const unsigned char*>(&k);
      std::size_t h = 1469598103934665603ull;  // FNV-1a over the key's bytes
      for (std::size_t i = 0; i < sizeof(Key); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
      return h;
    }
  };
  struct Plan {
    LtDescriptors d;
    cublasLtMatmulAlgo_t algo{};
    bool has_algo = false;
  };

  Plan& plan_for(const LtProblem& p) {
    Key key;
    std::memset(&key, 0, sizeof key);  // padding bytes take part in hashing and comparison
    key.transa = p.transa;
    key.transb = p.transb;
    key.m = p.m;
    key.n = p.n;
    key.k = p.k;
    key.lda = p.lda;
    key.ldb = p.ldb;
    key.ldc = p.ldc;
    key.ldaux = p.aux ? p.ldaux : 0;
    key.in_type = p.in_type;
    key.out_type = p.out_type;
    key.scale_type = p.scale_type;
    key.compute = p.compute;
    key.epilogue = p.epilogue;
    key.align_a = lt_alignment(p.a);
    key.align_b = lt_alignment(p.b);
    key.align_c = lt_alignment(p.c);
    key.align_aux = p.aux ? lt_alignment(p.aux) : 0;
    key.align_bias = p.bias ? lt_alignment(p.bias) : 0;
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    if (plans_.size() >= kMaxPlans) plans_.clear();
    Plan& plan = plans_[key];
    try {
      build(plan, p);
    } catch (...) {
      plans_.erase(key);  // never keep a half-built plan
      throw;
    }
    return plan;
  }

  void build(Plan& plan, const LtProblem& p) {
    plan.d = lt_describe(p, kWorkspaceBytes);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, plan.d.desc, plan.d.a_layout, plan.d.b_layout,
                                                             plan.d.c_layout, plan.d.c_layout, plan.d.pref, 1, &result,
                                                             &found);
    // NOT_SUPPORTED means "no algorithm for this configuration": remembered, so the caller's
    // fallback is taken without asking again. Anything else is a real error. A returned
    // algorithm counts only when its own state is SUCCESS.
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) MDLM_CUBLAS_CHECK(st);
    plan.has_algo = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (plan.has_algo) plan.algo = result.algo;
  }

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::unordered_map<Key, Plan, KeyHash> plans_;
};

}  // namespace mdlm
