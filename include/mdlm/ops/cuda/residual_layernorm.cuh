#pragma once
// CUDA gated residual + dropout + LayerNorm + adaLN modulation in one pass each way (the math
// and the Host twin: ops/residual_layernorm.hpp). One warp per row; each lane handles 16-byte
// vectors (4 fp32 or 8 bf16 values) where the row length, every leading dimension and every
// base pointer allow, else single elements (the same kernels with a vector of one).
//   forward: xn = x + gate * drop(y) written (rounded to T), its mean and rstd from the stored
//            values (a warp sum each), then h = LN(xn) * w * (1 + scale) + shift; the lane
//            re-reads only what it wrote itself (L1/L2).
//   backward: the two row sums of the LayerNorm gradient, then xn's whole gradient dt, dx and
//            dy in a second sweep of the row; dgate, dw, dshift, dscale through the
//            deterministic two-stage column reductions (ops/cuda/column_reduce.cuh) on the
//            terms the unfused ops use. No atomics.
// Statistics and arithmetic in fp32 (fp32 and bf16 tensors).

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/ops/cuda/column_reduce.cuh"
#include "mdlm/ops/cuda/layernorm.cuh"
#include "mdlm/ops/residual_layernorm.hpp"

namespace mdlm {

template <>
inline constexpr bool kFusedResidualLayerNorm<Cuda> = true;

// Arguments of the forward kernel.
template <class T>
struct ResidualLayerNormForward {
  MatrixView<const T, Cuda> x, y, gate, shift, scale;  // gate, shift, scale: nullptr when absent
  const T* w = nullptr;
  std::int64_t seq_len = 1;
  DropoutSite drop;
  float eps = 0;
  MatrixView<T, Cuda> xn, h;
  float* mean = nullptr;
  float* rstd = nullptr;
};

namespace cuda_detail {

// Elements per 16-byte vector of T.
template <class T>
inline constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

// Whether rows of `cols` elements of these matrices can be read and written in 16-byte vectors:
// cols, every leading dimension a multiple of the vector, every base pointer 16-byte aligned
// (views without data do not count).
template <class T>
bool vector_rows_ok(std::int64_t cols, std::initializer_list<std::pair<const void*, std::int64_t>> views) {
  const std::int64_t n = kVec16<T>;
  if (cols % n != 0) return false;
  for (const auto& [p, ld] : views) {
    if (p == nullptr) continue;
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0 || ld % n != 0) return false;
  }
  return true;
}

// N consecutive elements at p: one 16-byte access when N elements are 16 bytes (the caller
// guarantees the alignment), else one element at a time.
template <int N, class T>
__device__ inline void load_n(T (&v)[N], const T* p) {
  if constexpr (N * sizeof(T) == 16) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    memcpy(&v[0], &u, 16);
  } else {
    for (int k = 0; k < N; ++k) v[k] = p[k];
  }
}
template <int N, class T>
__device__ inline void store_n(T* p, const T (&v)[N]) {
  if constexpr (N * sizeof(T) == 16) {
    uint4 u;
    memcpy(&u, &v[0], 16);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
    for (int k = 0; k < N; ++k) p[k] = v[k];
  }
}
// N compute values of the elements at p, or `fill` when p is nullptr (an absent gate or scale).
template <int N, class T>
__device__ inline void load_compute(float (&v)[N], const T* p, float fill) {
  if (p == nullptr) {
    for (int k = 0; k < N; ++k) v[k] = fill;
    return;
  }
  T t[N];
  load_n<N>(t, p);
  for (int k = 0; k < N; ++k) v[k] = to_compute(t[k]);
}

}  // namespace cuda_detail

namespace cuda_kernels {

// One warp per row r; lane l handles the vectors at columns l N, (l + 32) N, ...
template <class T, int N>
__global__ void residual_layernorm_forward(ResidualLayerNormForward<T> a) {
  using cuda_detail::load_compute;
  const std::int64_t r = cuda_detail::global_index() / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (r >= a.x.rows) return;  // whole warps: the grid is rows x 32 threads in blocks of whole warps
  const std::int64_t cols = a.x.cols, b = r / a.seq_len;
  const T* xr = a.x.data + r * a.x.ld;
  const T* yr = a.y.data + r * a.y.ld;
  const T* gr = a.gate.data != nullptr ? a.gate.data + b * a.gate.ld : nullptr;
  T* nr = a.xn.data + r * a.xn.ld;
  float sum = 0;
  for (std::int64_t c = static_cast<std::int64_t>(lane) * N; c < cols; c += 32 * N) {
    float xv[N], yv[N], gv[N], f[N];
    load_compute<N>(xv, xr + c, 0.0f);
    load_compute<N>(yv, yr + c, 0.0f);
    load_compute<N>(gv, gr != nullptr ? gr + c : nullptr, 1.0f);
    dropout_factors_small<N>(a.drop, static_cast<std::uint64_t>(r * cols + c), f);
    T o[N];
    for (int k = 0; k < N; ++k) {
      o[k] = from_compute<T>(rln_residual(xv[k], yv[k], f[k], gv[k]));
      sum += to_compute(o[k]);
    }
    cuda_detail::store_n<N>(nr + c, o);
  }
  const float m = cuda_detail::warp_sum(sum) / static_cast<float>(cols);
  float var = 0;
  for (std::int64_t c = static_cast<std::int64_t>(lane) * N; c < cols; c += 32 * N) {
    float v[N];
    load_compute<N>(v, nr + c, 0.0f);  // this lane's own stores
    for (int k = 0; k < N; ++k) var += (v[k] - m) * (v[k] - m);
  }
  const float rs = rsqrtf(cuda_detail::warp_sum(var) / static_cast<float>(cols) + a.eps);
  if (lane == 0) {
    a.mean[r] = m;
    a.rstd[r] = rs;
  }
  const T* sh = a.shift.data != nullptr ? a.shift.data + b * a.shift.ld : nullptr;
  const T* sc = a.scale.data != nullptr ? a.scale.data + b * a.scale.ld : nullptr;
  T* hr = a.h.data + r * a.h.ld;
  for (std::int64_t c = static_cast<std::int64_t>(lane) * N; c < cols; c += 32 * N) {
    float v[N], wv[N];
    load_compute<N>(v, nr + c, 0.0f);
    load_compute<N>(wv, a.w + c, 0.0f);
    T o[N];
    if (sh != nullptr) {
      float shv[N], scv[N];
      load_compute<N>(shv, sh + c, 0.0f);
      load_compute<N>(scv, sc + c, 0.0f);
      for (int k = 0; k < N; ++k) o[k] = from_compute<T>((v[k] - m) * rs * wv[k] * (1.0f + scv[k]) + shv[k]);
    } else {
      for (int k = 0; k < N; ++k) o[k] = from_compute<T>((v[k] - m) * rs * wv[k]);
    }
    cuda_detail::store_n<N>(hr + c, o);
  }
}

// The row-wise part of the backward: one warp per row, two sweeps (the row sums; then dt, dx,
// dy). dt, dx and dy may not alias each other (the op passes dt = dx's buffer with dx absent).
template <class T, class G, int N>
__global__ void residual_layernorm_backward_rows(ResidualLayerNormGrads<T, G, Cuda> a) {
  using cuda_detail::load_compute;
  const std::int64_t r = cuda_detail::global_index() / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (r >= a.xn.rows) return;  // whole warps
  const std::int64_t cols = a.xn.cols, b = r / a.seq_len;
  const T* xr = a.xn.data + r * a.xn.ld;
  const T* dhr = a.dh.data + r * a.dh.ld;
  const T* sc = a.scale.data != nullptr ? a.scale.data + b * a.scale.ld : nullptr;
  const float mu = a.mean[r], rs = a.rstd[r];
  float s1 = 0, s2 = 0;
  for (std::int64_t c = static_cast<std::int64_t>(lane) * N; c < cols; c += 32 * N) {
    float xv[N], dv[N], sv[N], wv[N];
    load_compute<N>(xv, xr + c, 0.0f);
    load_compute<N>(dv, dhr + c, 0.0f);
    load_compute<N>(sv, sc != nullptr ? sc + c : nullptr, 0.0f);
    load_compute<N>(wv, a.w + c, 0.0f);
    for (int k = 0; k < N; ++k) {
      const float gw = rln_dxhat(dv[k], sv[k], wv[k]);
      s1 += gw;
      s2 += gw * ((xv[k] - mu) * rs);
    }
  }
  const float mg = cuda_detail::warp_sum(s1) / static_cast<float>(cols);
  const float mgx = cuda_detail::warp_sum(s2) / static_cast<float>(cols);
  const T* dxnr = a.dxn.data + r * a.dxn.ld;
  const T* gr = a.gate.data != nullptr ? a.gate.data + b * a.gate.ld : nullptr;
  for (std::int64_t c = static_cast<std::int64_t>(lane) * N; c < cols; c += 32 * N) {
    float xv[N], dv[N], sv[N], wv[N], nv[N];
    load_compute<N>(xv, xr + c, 0.0f);
    load_compute<N>(dv, dhr + c, 0.0f);
    load_compute<N>(sv, sc != nullptr ? sc + c : nullptr, 0.0f);
    load_compute<N>(wv, a.w + c, 0.0f);
    load_compute<N>(nv, dxnr + c, 0.0f);
    T dt[N];
    for (int k = 0; k < N; ++k)
      dt[k] = from_compute<T>(rln_total(nv[k], rln_dxhat(dv[k], sv[k], wv[k]), (xv[k] - mu) * rs, rs, mg, mgx));
    if (a.dt.data != nullptr) cuda_detail::store_n<N>(a.dt.data + r * a.dt.ld + c, dt);
    if (a.dx.data != nullptr) {
      T* p = a.dx.data + r * a.dx.ld + c;
      T o[N];
      if (a.acc_dx) {
        float old[N];
        load_compute<N>(old, p, 0.0f);
        for (int k = 0; k < N; ++k) o[k] = from_compute<T>(old[k] + to_compute(dt[k]));
      } else {
        for (int k = 0; k < N; ++k) o[k] = dt[k];
      }
      cuda_detail::store_n<N>(p, o);
    }
    if (a.dy.data != nullptr) {
      float f[N], gv[N];
      dropout_factors_small<N>(a.drop, static_cast<std::uint64_t>(r * cols + c), f);
      load_compute<N>(gv, gr != nullptr ? gr + c : nullptr, 1.0f);
      T* p = a.dy.data + r * a.dy.ld + c;
      float old[N];
      load_compute<N>(old, a.acc_dy ? p : nullptr, 0.0f);
      T o[N];
      for (int k = 0; k < N; ++k) {
        const float v = to_compute(dt[k]) * f[k] * gv[k];
        o[k] = from_compute<T>(a.acc_dy ? old[k] + v : v);
      }
      cuda_detail::store_n<N>(p, o);
    }
  }
}

}  // namespace cuda_kernels

// Launch configurations (checked on the CPU for every model shape: tests/cuda_host/): one warp
// per row, blocks of 256 threads (8 rows), no shared memory.
namespace launches {
inline LaunchConfig residual_layernorm_forward(std::int64_t rows) {
  return layernorm_rows("residual_layernorm_forward", rows);
}
inline LaunchConfig residual_layernorm_backward_rows(std::int64_t rows) {
  return layernorm_rows("residual_layernorm_backward_rows", rows);
}
}  // namespace launches

template <class T>
void residual_layernorm_forward(Cuda& ctx, MatrixView<const T, Cuda> x, MatrixView<const T, Cuda> y,
                                MatrixView<const T, Cuda> gate, std::int64_t seq_len, DropoutSite drop, const T* w,
                                MatrixView<const T, Cuda> shift, MatrixView<const T, Cuda> scale, double eps,
                                MatrixView<T, Cuda> xn, MatrixView<T, Cuda> h, float* mean, float* rstd) {
  static_assert(std::is_same_v<compute_t<T>, float>, "the CUDA fused residual + LayerNorm runs in fp32");
  const ResidualLayerNormForward<T> a{x,  y, gate, shift, scale, w, seq_len, drop, static_cast<float>(eps),
                                      xn, h, mean, rstd};
  const bool vec = cuda_detail::vector_rows_ok<T>(x.cols, {{x.data, x.ld},
                                                           {y.data, y.ld},
                                                           {gate.data, gate.ld},
                                                           {shift.data, shift.ld},
                                                           {scale.data, scale.ld},
                                                           {w, 0},
                                                           {xn.data, xn.ld},
                                                           {h.data, h.ld}});
  const LaunchConfig cfg = launches::residual_layernorm_forward(x.rows);
  if (vec) {
    launch(ctx, cfg, cuda_kernels::residual_layernorm_forward<T, cuda_detail::kVec16<T>>, a);
  } else {
    launch(ctx, cfg, cuda_kernels::residual_layernorm_forward<T, 1>, a);
  }
}

// `scratch`: residual_layernorm_reduce_scratch(ctx, ...) elements (the column sums' partials).
template <class T, class G>
void residual_layernorm_backward(Cuda& ctx, const ResidualLayerNormGrads<T, G, Cuda>& a,
                                 ReduceScratch<float, Cuda> scratch) {
  static_assert(std::is_same_v<compute_t<T>, float>, "the CUDA fused residual + LayerNorm runs in fp32");
  const bool vec = cuda_detail::vector_rows_ok<T>(a.xn.cols, {{a.dxn.data, a.dxn.ld},
                                                              {a.dh.data, a.dh.ld},
                                                              {a.xn.data, a.xn.ld},
                                                              {a.gate.data, a.gate.ld},
                                                              {a.scale.data, a.scale.ld},
                                                              {a.w, 0},
                                                              {a.dt.data, a.dt.ld},
                                                              {a.dx.data, a.dx.ld},
                                                              {a.dy.data, a.dy.ld}});
  const LaunchConfig cfg = launches::residual_layernorm_backward_rows(a.xn.rows);
  if (vec) {
    launch(ctx, cfg, cuda_kernels::residual_layernorm_backward_rows<T, G, cuda_detail::kVec16<T>>, a);
  } else {
    launch(ctx, cfg, cuda_kernels::residual_layernorm_backward_rows<T, G, 1>, a);
  }
  // The column sums share the scratch one after another (stream order).
  residual_layernorm_column_sums(a, [&](const ColumnReduceShape& s, const auto& term, const auto& sink) {
    column_reduce(ctx, s, term, sink, scratch);
  });
}

}  // namespace mdlm
