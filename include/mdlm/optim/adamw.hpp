#pragma once
// Optimization (DESIGN §1 recipe): AdamW with fp32 master weights and state (decoupled weight
// decay, bias correction), learning-rate schedules (constant or cosine, both after a linear
// warmup), global-norm gradient clipping, and an EMA of the weights with the warm-up rule
// decay_n = min(decay, (1 + n) / (10 + n)). Every buffer is one contiguous array in the
// ParamLayout order, so each update is one fused pass (one kernel launch on CUDA).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

struct AdamWConfig {
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

struct LrSchedule {
  enum class Kind { Constant, Cosine };
  Kind kind = Kind::Constant;
  double peak = 3e-4;
  std::int64_t warmup = 2500;
  std::int64_t total = 0;       // cosine: the step where the decay ends
  double final_ratio = 0.1;     // cosine: lr at `total` = final_ratio * peak
  // lr of optimizer step `step` (1-based).
  double at(std::int64_t step) const {
    if (warmup > 0 && step <= warmup) return peak * static_cast<double>(step) / static_cast<double>(warmup);
    if (kind == Kind::Constant || total <= warmup) return peak;
    const double p = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(total - warmup));
    return peak * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * p)));
  }
  static Kind parse(const std::string& s) {
    if (s == "constant") return Kind::Constant;
    if (s == "cosine") return Kind::Cosine;
    MDLM_FAIL("unknown learning-rate schedule '", s, "' (expected constant or cosine)");
  }
};

inline double ema_decay_at(double decay, std::int64_t updates) {
  return std::min(decay, (1.0 + static_cast<double>(updates)) / (10.0 + static_cast<double>(updates)));
}

// ---- Host kernels -----------------------------------------------------------------------

// Sum of squares of n values in a fixed order (chunks of 4096 summed in order): deterministic.
template <class G>
double sum_of_squares(const Host& ctx, const G* g, std::int64_t n) {
  const std::int64_t chunk = 4096, chunks = (n + chunk - 1) / chunk;
  std::vector<double> part(static_cast<std::size_t>(chunks), 0.0);
  ctx.parallel_for(chunks, [&](std::int64_t c) {
    double s = 0;
    for (std::int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
      const double v = static_cast<double>(to_compute(g[i]));
      s += v * v;
    }
    part[static_cast<std::size_t>(c)] = s;
  });
  double total = 0;
  for (double s : part) total += s;
  return total;
}

struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  float bias1, bias2;      // 1 - beta^t
  float grad_scale;        // clipping factor (1: none)
};

// master/m/v fp32; grad G; value T (what the model reads) = master rounded.
template <class G, class T>
void adamw_update(const Host& ctx, std::int64_t n, float* master, float* m, float* v, const G* grad, T* value, AdamWStep s) {
  ctx.parallel_for((n + 1023) / 1024, [&](std::int64_t c) {
    for (std::int64_t i = c * 1024; i < std::min(n, (c + 1) * 1024); ++i) {
      const float g = static_cast<float>(to_compute(grad[i])) * s.grad_scale;
      m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * g;
      v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
      const float mh = m[i] / s.bias1, vh = v[i] / s.bias2;
      master[i] -= s.lr * (mh / (std::sqrt(vh) + s.eps) + s.weight_decay * master[i]);
      value[i] = from_compute<T>(static_cast<compute_t<T>>(master[i]));
    }
  });
}

inline void ema_update(const Host& ctx, std::int64_t n, float* ema, const float* master, float decay) {
  ctx.parallel_for((n + 1023) / 1024, [&](std::int64_t c) {
    for (std::int64_t i = c * 1024; i < std::min(n, (c + 1) * 1024); ++i) ema[i] = decay * ema[i] + (1.0f - decay) * master[i];
  });
}

template <class T>
void cast_from_master(const Host& ctx, std::int64_t n, const float* master, T* value) {
  ctx.parallel_for((n + 1023) / 1024, [&](std::int64_t c) {
    for (std::int64_t i = c * 1024; i < std::min(n, (c + 1) * 1024); ++i) value[i] = from_compute<T>(static_cast<compute_t<T>>(master[i]));
  });
}

// ---- the optimizer state ------------------------------------------------------------------

// AdamW + EMA over one contiguous parameter buffer of n elements on backend B.
template <class B>
class AdamW {
 public:
  AdamW(std::int64_t n, AdamWConfig cfg, double ema_decay)
      : n_(n), cfg_(cfg), ema_decay_(ema_decay), master_(n), m_(n), v_(n), ema_(n) {
    MemoryOps<B>::zero(m_.data(), m_.bytes());
    MemoryOps<B>::zero(v_.data(), v_.bytes());
  }

  std::int64_t size() const { return n_; }
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t s) { steps_ = s; }
  const AdamWConfig& config() const { return cfg_; }
  double ema_decay() const { return ema_decay_; }
  float* master() { return master_.data(); }
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }
  float* ema() { return ema_.data(); }

  // Loads host copies (ParamLayout order) of the master weights, EMA and moments.
  void load(B& ctx, const std::vector<float>& master, const std::vector<float>& ema, const std::vector<float>* m = nullptr,
            const std::vector<float>* v = nullptr) {
    MDLM_CHECK(static_cast<std::int64_t>(master.size()) == n_ && static_cast<std::int64_t>(ema.size()) == n_,
               "optimizer: ", master.size(), " weights for ", n_);
    upload_into(ctx, master.data(), n_, master_.data());
    upload_into(ctx, ema.data(), n_, ema_.data());
    if (m != nullptr) upload_into(ctx, m->data(), n_, m_.data());
    if (v != nullptr) upload_into(ctx, v->data(), n_, v_.data());
  }

  // Global L2 norm of the gradient (deterministic).
  template <class G>
  double grad_norm(B& ctx, const G* grad) const {
    return std::sqrt(sum_of_squares(ctx, grad, n_));
  }

  // One update with learning rate lr; the gradient is scaled to global norm `clip` when its
  // norm (from grad_norm) exceeds it (clip 0: no clipping). Writes the new weights, rounded to
  // T, into `value`, and advances the EMA.
  template <class G, class T>
  void update(B& ctx, const G* grad, T* value, double lr, double norm, double clip) {
    const double scale = clip > 0 && norm > clip ? clip / norm : 1.0;
    ++steps_;
    AdamWStep s{static_cast<float>(lr), static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                static_cast<float>(cfg_.eps), static_cast<float>(cfg_.weight_decay),
                static_cast<float>(1.0 - std::pow(cfg_.beta1, static_cast<double>(steps_))),
                static_cast<float>(1.0 - std::pow(cfg_.beta2, static_cast<double>(steps_))), static_cast<float>(scale)};
    adamw_update(ctx, n_, master_.data(), m_.data(), v_.data(), grad, value, s);
    ema_update(ctx, n_, ema_.data(), master_.data(), static_cast<float>(ema_decay_at(ema_decay_, steps_)));
  }

 private:
  std::int64_t n_;
  AdamWConfig cfg_;
  double ema_decay_;
  std::int64_t steps_ = 0;
  Buffer<float, B> master_, m_, v_, ema_;
};

}  // namespace mdlm
