#pragma once
// Sinusoidal timestep embedding of the noise level sigma (B) -> (B, dim), cos first:
//   f_i = exp(-ln(10000) i / (dim/2)),  emb[b] = [cos(sigma_b f_0..), sin(sigma_b f_0..)]
// sigma is an input (no gradient flows to it).

#include <cmath>
#include <cstdint>
#include <vector>

#include "mdlm/backend/host.hpp"

namespace mdlm {

template <class T>
void timestep_embedding(const Host& ctx, const T* sigma, std::int64_t batches, MatrixView<T, Host> out,
                        double max_period = 10000.0) {
  const std::int64_t half = out.cols / 2;
  ctx.parallel_for(batches, [&](std::int64_t b) {
    for (std::int64_t i = 0; i < half; ++i) {
      const double f = std::exp(-std::log(max_period) * static_cast<double>(i) / static_cast<double>(half));
      const double a = static_cast<double>(sigma[b]) * f;
      out.data[b * out.ld + i] = static_cast<T>(std::cos(a));
      out.data[b * out.ld + half + i] = static_cast<T>(std::sin(a));
    }
    if (out.cols % 2 == 1) out.data[b * out.ld + out.cols - 1] = T(0);
  });
}

// sigma (float, B values) already in backend memory, or nullptr for sigma = 0 — the form a
// device-resident sampling loop uses (ops/cuda/elementwise.cuh has the CUDA one).
template <class T>
void timestep_embedding_resident(const Host& ctx, const float* sigma, std::int64_t batches, MatrixView<T, Host> out,
                                 double max_period = 10000.0) {
  std::vector<T> s(static_cast<std::size_t>(batches), T(0));
  if (sigma != nullptr)
    for (std::int64_t b = 0; b < batches; ++b) s[static_cast<std::size_t>(b)] = static_cast<T>(sigma[b]);
  timestep_embedding(ctx, s.data(), batches, out, max_period);
}

}  // namespace mdlm
