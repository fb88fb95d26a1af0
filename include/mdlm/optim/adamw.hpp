#pragma once
// Optimization (DESIGN §1 recipe): AdamW with master weights and state (decoupled weight
// decay, bias correction), learning-rate schedules (constant or cosine, both after a linear
// warmup), global-norm gradient clipping, and an EMA of the weights with the warm-up rule
// decay_n = min(decay, (1 + n) / (10 + n)). Every buffer is one contiguous array in the
// ParamLayout order, so each update is one fused pass (one kernel launch on CUDA).
//
// The semantics are PyTorch's and Lightning's (the paper's code), step by step:
//   clipping  clip_grad_norm_: g *= min(1, clip / (norm + 1e-6)), norm the global L2 norm;
//   AdamW     p *= 1 - lr wd; m, v updated with beta1, beta2; p -= lr m_hat / (sqrt(v_hat) + eps)
//             with m_hat, v_hat bias-corrected by the step count k (one parameter group);
//   EMA       starts at the initial weights and is updated after every optimizer step from the
//             new weights, n counting this update.
// The master weights, moments and EMA are kept in the state type S: fp32 for fp32/bf16 models,
// fp64 for fp64 models (optimizer_state_t), so a Host fp64 run is fp64 throughout and can be
// held to an fp64 PyTorch reference over many steps (io/trajectory.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "mdlm/backend/host.hpp"
#include "mdlm/core/bf16.hpp"
#include "mdlm/core/config.hpp"
#include "mdlm/core/math.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"
#include "mdlm/optim/step_status.hpp"

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

// clip_multiplier (clip_grad_norm_'s) is in optim/step_status.hpp, where the device runs it too.

// The type of the master weights, moments and EMA for a model of value type T: fp64 for fp64
// models, fp32 otherwise (fp32 master weights under bf16, DESIGN §1).
template <class T>
using optimizer_state_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline double ema_decay_at(double decay, std::int64_t updates) {
  return std::min(decay, (1.0 + static_cast<double>(updates)) / (10.0 + static_cast<double>(updates)));
}

// ---- Host kernels -----------------------------------------------------------------------

// Sum of squares of n values in a fixed order (chunks of 4096 summed in order): deterministic.
// The partial sums go to `partial` (sum_of_squares_partials(ctx, n) doubles, allocated once by
// the caller, so a training step allocates nothing) and the total to *out, in backend memory.
inline constexpr std::int64_t kSumOfSquaresChunk = 4096;
inline std::int64_t sum_of_squares_partials(const Host&, std::int64_t n) {
  return std::max<std::int64_t>(1, (n + kSumOfSquaresChunk - 1) / kSumOfSquaresChunk);
}
template <class G>
void sum_of_squares_into(const Host& ctx, const G* g, std::int64_t n, double* partial, double* out) {
  const std::int64_t chunk = kSumOfSquaresChunk, chunks = (n + chunk - 1) / chunk;
  ctx.parallel_for(chunks, [&](std::int64_t c) {
    double s = 0;
    for (std::int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
      const double v = static_cast<double>(to_compute(g[i]));
      s += v * v;
    }
    partial[c] = s;
  });
  double total = 0;
  for (std::int64_t c = 0; c < chunks; ++c) total += partial[c];
  *out = total;
}
// The same, returned to the host (allocates its partial sums).
template <class G>
double sum_of_squares(const Host& ctx, const G* g, std::int64_t n) {
  std::vector<double> part(static_cast<std::size_t>(sum_of_squares_partials(ctx, n)), 0.0);
  double total = 0;
  sum_of_squares_into(ctx, g, n, part.data(), &total);
  return total;
}

// The scalars of one AdamW update in the state type S.
template <class S>
struct AdamWStepOf {
  S lr, beta1, beta2, eps, weight_decay;
  S bias1, bias2;      // 1 - beta^k
  S grad_scale;        // clipping multiplier (1: none)
};
using AdamWStep = AdamWStepOf<float>;  // the fp32 state (Host fp32, CUDA)

template <class S>
AdamWStepOf<S> make_adamw_step(const AdamWConfig& cfg, double lr, std::int64_t step, double grad_scale) {
  return {static_cast<S>(lr),
          static_cast<S>(cfg.beta1),
          static_cast<S>(cfg.beta2),
          static_cast<S>(cfg.eps),
          static_cast<S>(cfg.weight_decay),
          static_cast<S>(1.0 - std::pow(cfg.beta1, static_cast<double>(step))),
          static_cast<S>(1.0 - std::pow(cfg.beta2, static_cast<double>(step))),
          static_cast<S>(grad_scale)};
}

// One element of the AdamW update: the arithmetic of PyTorch's AdamW (torch.optim.AdamW,
// single-tensor path), in its order. Both backends run this function (the CUDA kernel in
// ops/cuda/optim.cuh too), with the step's scalars from adamw_scalars.
template <class S>
struct AdamWScalars {
  S step_size, bias2_sqrt, decay;  // lr / bias1, sqrt(bias2), 1 - lr * weight_decay
};
template <class S>
MDLM_HD inline AdamWScalars<S> adamw_scalars(const AdamWStepOf<S>& s) {
  return {s.lr / s.bias1, sqrt_of(s.bias2), S(1) - s.lr * s.weight_decay};
}
// Updates master, m and v of one element with gradient g (already clipped); returns the new weight.
template <class S>
MDLM_HD inline S adamw_element(S& master, S& m, S& v, S g, const AdamWStepOf<S>& s, const AdamWScalars<S>& k) {
  S p = master * k.decay;
  m += (S(1) - s.beta1) * (g - m);  // torch: exp_avg.lerp_(grad, 1 - beta1)
  v = s.beta2 * v + (S(1) - s.beta2) * g * g;
  p -= k.step_size * (m / (sqrt_of(v) / k.bias2_sqrt + s.eps));
  master = p;
  return p;
}

// master/m/v in the state type S; grad G; value T (what the model reads) = master rounded.
template <class S, class G, class T>
void adamw_update(const Host& ctx, std::int64_t n, S* master, S* m, S* v, const G* grad, T* value, AdamWStepOf<S> s) {
  const AdamWScalars<S> k = adamw_scalars(s);
  ctx.parallel_for((n + 1023) / 1024, [&](std::int64_t c) {
    for (std::int64_t i = c * 1024; i < std::min(n, (c + 1) * 1024); ++i) {
      const S g = static_cast<S>(to_compute(grad[i])) * s.grad_scale;
      value[i] = from_compute<T>(static_cast<compute_t<T>>(adamw_element(master[i], m[i], v[i], g, s, k)));
    }
  });
}

template <class S>
void ema_update(const Host& ctx, std::int64_t n, S* ema, const S* master, S decay) {
  ctx.parallel_for((n + 1023) / 1024, [&](std::int64_t c) {
    for (std::int64_t i = c * 1024; i < std::min(n, (c + 1) * 1024); ++i) ema[i] = decay * ema[i] + (S(1) - decay) * master[i];
  });
}

// The updates of a step whose gradient is described by a StepStatus in backend memory: the
// clipping multiplier is read from it, and nothing is done once its sticky flag is set (a step
// with a non-finite loss or norm, and every step after it, leaves the state as it was).
template <class S, class G, class T>
void adamw_update(const Host& ctx, std::int64_t n, S* master, S* m, S* v, const G* grad, T* value, AdamWStepOf<S> s,
                  const StepStatus* status) {
  if (status->bad != 0) return;
  s.grad_scale = static_cast<S>(status->multiplier);  // as make_adamw_step rounds it
  adamw_update(ctx, n, master, m, v, grad, value, s);
}
template <class S>
void ema_update(const Host& ctx, std::int64_t n, S* ema, const S* master, S decay, const StepStatus* status) {
  if (status->bad == 0) ema_update(ctx, n, ema, master, decay);
}

template <class S, class T>
void cast_from_master(const Host& ctx, std::int64_t n, const S* master, T* value) {
  ctx.parallel_for((n + 1023) / 1024, [&](std::int64_t c) {
    for (std::int64_t i = c * 1024; i < std::min(n, (c + 1) * 1024); ++i) value[i] = from_compute<T>(static_cast<compute_t<T>>(master[i]));
  });
}

// ---- the optimizer state ------------------------------------------------------------------

// AdamW + EMA over one contiguous parameter buffer of n elements on backend B, with master
// weights, moments and EMA of type S (optimizer_state_t of the model's value type).
template <class B, class S = float>
class AdamW {
 public:
  using State = S;
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
  S* master() { return master_.data(); }
  S* m() { return m_.data(); }
  S* v() { return v_.data(); }
  S* ema() { return ema_.data(); }

  // Loads host copies (ParamLayout order) of the master weights, EMA and moments.
  void load(B& ctx, const std::vector<S>& master, const std::vector<S>& ema, const std::vector<S>* m = nullptr,
            const std::vector<S>* v = nullptr) {
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

  // One optimizer step with learning rate lr: the gradient (of global norm `norm`, from
  // grad_norm) is clipped by clip_multiplier(norm, clip), AdamW updates the master weights and
  // writes them, rounded to T, into `value`; then the EMA follows the new weights.
  template <class G, class T>
  void update(B& ctx, const G* grad, T* value, double lr, double norm, double clip) {
    ++steps_;
    adamw_update(ctx, n_, master_.data(), m_.data(), v_.data(), grad, value,
                 make_adamw_step<S>(cfg_, lr, steps_, clip_multiplier(norm, clip)));
    ema_update(ctx, n_, ema_.data(), master_.data(), static_cast<S>(ema_decay_at(ema_decay_, steps_)));
  }

  // The same step with the clipping multiplier read from `status` (backend memory: nothing is
  // read on the host), skipped on the device when its flag says the gradient was not finite.
  // The step count advances either way: a run whose status turned bad is stopped by its caller.
  template <class G, class T>
  void update(B& ctx, const G* grad, T* value, double lr, const StepStatus* status) {
    ++steps_;
    adamw_update(ctx, n_, master_.data(), m_.data(), v_.data(), grad, value, make_adamw_step<S>(cfg_, lr, steps_, 1.0),
                 status);
    ema_update(ctx, n_, ema_.data(), master_.data(), static_cast<S>(ema_decay_at(ema_decay_, steps_)), status);
  }

 private:
  std::int64_t n_;
  AdamWConfig cfg_;
  double ema_decay_;
  std::int64_t steps_ = 0;
  Buffer<S, B> master_, m_, v_, ema_;
};

}  // namespace mdlm
