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

class LtGemm {
 public:
  static constexpr std::size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends for Hopper

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
    Plan& plan = plan_for(p);
    if (!plan.has_algo) return false;
    if (p.bias != nullptr) {
      MDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                                       sizeof(p.bias)));
    }
    if (p.aux != nullptr) {
      MDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                       &p.aux, sizeof(p.aux)));
    }
    MDLM_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, p.alpha, p.a, plan.a_layout, p.b, plan.b_layout, p.beta,
                                     p.c, plan.c_layout, p.c, plan.c_layout, &plan.algo, workspace_,
                                     kWorkspaceBytes, stream_));
    return true;
  }

  std::size_t plan_count() const { return plans_.size(); }

 private:
  struct Key {
    int transa, transb;
    std::int64_t m, n, k, lda, ldb, ldc, ldaux;
    int in_type, out_type, scale_type, compute, epilogue;
    int align_a, align_b, align_c, align_aux;  // pointer alignment classes (bytes, capped at 256)
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
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a_layout = nullptr, b_layout = nullptr, c_layout = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool has_algo = false;
    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
      if (a_layout) cublasLtMatrixLayoutDestroy(a_layout);
      if (b_layout) cublasLtMatrixLayoutDestroy(b_layout);
      if (c_layout) cublasLtMatrixLayoutDestroy(c_layout);
      if (desc) cublasLtMatmulDescDestroy(desc);
    }
  };

  static int alignment(const void* p) {
    auto v = reinterpret_cast<std::uintptr_t>(p);
    int a = 256;
    while (a > 1 && (v % static_cast<std::uintptr_t>(a)) != 0) a /= 2;
    return a;
  }

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
    key.align_a = alignment(p.a);
    key.align_b = alignment(p.b);
    key.align_c = alignment(p.c);
    key.align_aux = p.aux ? alignment(p.aux) : 0;
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan& plan = plans_[key];
    try {
      build(plan, p, key);
    } catch (...) {
      plans_.erase(key);  // never keep a half-built plan
      throw;
    }
    return plan;
  }

  void build(Plan& plan, const LtProblem& p, const Key& key) {
    MDLM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, p.compute, p.scale_type));
    set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, p.transa);
    set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, p.transb);
    set(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, p.epilogue);
    if (p.aux != nullptr) {
      set(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, p.ldaux);
    }
    // Pointer attributes must be set before the heuristic when the epilogue uses them.
    if (p.bias != nullptr) set(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
    if (p.aux != nullptr) set(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, p.aux);
    MDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a_layout, p.in_type, static_cast<std::uint64_t>(p.a_rows),
                                                 static_cast<std::uint64_t>(p.a_cols), p.lda));
    MDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b_layout, p.in_type, static_cast<std::uint64_t>(p.b_rows),
                                                 static_cast<std::uint64_t>(p.b_cols), p.ldb));
    MDLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c_layout, p.out_type, static_cast<std::uint64_t>(p.m),
                                                 static_cast<std::uint64_t>(p.n), p.ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    MDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, std::uint64_t v) {
      MDLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof v));
    };
    set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kWorkspaceBytes);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<std::uint64_t>(key.align_a));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<std::uint64_t>(key.align_b));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<std::uint64_t>(key.align_c));
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<std::uint64_t>(key.align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a_layout, plan.b_layout,
                                                       plan.c_layout, plan.c_layout, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    // NOT_SUPPORTED means "no algorithm for this configuration": remembered, so the caller's
    // fallback is taken without asking again. Anything else is a real error.
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) MDLM_CUBLAS_CHECK(st);
    plan.has_algo = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (plan.has_algo) plan.algo = result.algo;
  }

  template <class V>
  static void set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& v) {
    MDLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &v, sizeof v));
  }

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::unordered_map<Key, Plan, KeyHash> plans_;
};

}  // namespace mdlm
