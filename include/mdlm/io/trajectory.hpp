#pragma once
// Training trajectories (`mdlm-trajectory-v1`, DESIGN §6): many optimizer steps of an
// independent fp64 PyTorch run, replayed through the library's own objective, TrainStep
// (accumulation, global-norm clipping, AdamW, EMA) and compared step by step.
//
// One safetensors file. Metadata "config" (JSON):
//   model      vocab_size, mask_id (null for AR), hidden, n_heads, n_blocks, cond_dim, mlp_ratio,
//              seq_len, time_conditioning, causal, layer_norm_eps, rope_base, dropout (0)
//   objective  loss (mdlm_continuous_nelbo_token_mean | mdlm_discrete_nelbo_token_mean with T |
//              ar_token_mean_nll), schedule (loglinear | cosine | ...) and its eps
//   optimizer  lr (one value per step), beta1, beta2, adam_eps, weight_decay, clip (0: off),
//              ema (decay, warm-up min(decay, (1+n)/(10+n))), steps, accum
// Tensors (k = 1..steps, m = 0..accum-1; every other name is an error):
//   init.backbone.<name>                      f64 initial parameters (official names)
//   step.<k>.micro.<m>.x0, .zt                int [B, L] (AR: zt == x0)
//   step.<k>.micro.<m>.t                      f64 [B]
//   step.<k>.micro.<m>.loss_mask              f64 [B, L]
//   step.<k>.loss, step.<k>.grad_norm         f64 scalars: mean micro-batch loss, norm before clipping
//   final.backbone.<name>, final_ema.backbone.<name>   f64 master and EMA weights after the last step
// Every size (model, B, L, steps, accum) and hyperparameter is read from the file.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/core/bf16.hpp"
#include "mdlm/diffusion/masked_diffusion.hpp"
#include "mdlm/io/golden_check.hpp"
#include "mdlm/io/safetensors.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"
#include "mdlm/optim/adamw.hpp"
#include "mdlm/train/trainer.hpp"

namespace mdlm {

inline constexpr const char* kTrajectoryFormat = "mdlm-trajectory-v1";

// One micro-batch of a recorded step.
struct TrajectoryMicroBatch {
  std::int64_t batch = 0;            // B (from the tensors' shapes)
  std::vector<std::int32_t> x0, zt;  // (B*L)
  std::vector<double> t;             // (B)
  std::vector<double> loss_mask;     // (B*L)
};

enum class TrajectoryLoss { ContinuousNelbo, DiscreteNelbo, ArNll };

struct Trajectory {
  SafeTensors file;
  nlohmann::json config;
  DiTConfig model;
  std::optional<std::int64_t> mask_id;
  TrajectoryLoss loss = TrajectoryLoss::ContinuousNelbo;
  int discrete_steps = 0;  // T of the discrete-time NELBO
  std::int64_t steps = 0, accum = 0, seq_len = 0;
  std::int64_t batch = 0;  // B of the first micro-batch (each micro-batch's own B is read from its tensors)
  AdamWConfig adam;
  std::vector<double> lr;  // per step (index k - 1)
  double clip = 0, ema = 0;
  std::vector<double> step_loss, step_grad_norm;  // recorded, per step

  const std::string& origin() const { return file.origin(); }

  static std::string step_key(std::int64_t k, const char* what) { return "step." + std::to_string(k) + "." + what; }
  static std::string micro_key(std::int64_t k, std::int64_t m, const char* what) {
    return "step." + std::to_string(k) + ".micro." + std::to_string(m) + "." + what;
  }

  static Trajectory load(const std::string& path) { return from(SafeTensors::read(path)); }

  static Trajectory from(SafeTensors file) {
    Trajectory tr{std::move(file), {}, {}, std::nullopt, TrajectoryLoss::ContinuousNelbo, 0, 0, 0, 0, 0, {}, {}, 0, 0, {}, {}};
    const std::string origin = tr.file.origin();
    auto it = tr.file.metadata().find("config");
    if (it == tr.file.metadata().end()) MDLM_FAIL(origin, ": no 'config' entry in the safetensors metadata (not an ", kTrajectoryFormat, " file)");
    auto fmt = tr.file.metadata().find("format");
    if (fmt != tr.file.metadata().end() && fmt->second != kTrajectoryFormat) {
      MDLM_FAIL(origin, ": format '", fmt->second, "', expected ", kTrajectoryFormat);
    }
    std::string key;  // the config key being read, for the error message
    try {
      tr.config = nlohmann::json::parse(it->second);
      auto at = [&](const char* k) -> const nlohmann::json& {
        key = k;
        if (!tr.config.contains(k)) MDLM_FAIL(origin, ": config has no '", k, "'");
        return tr.config.at(k);
      };
      auto integer = [&](const char* k) { return json_number<std::int64_t>(at(k), origin + ": config '" + k + "'"); };
      auto number = [&](const char* k) { return json_number<double>(at(k), origin + ": config '" + k + "'"); };
      tr.model = fixture_model_config(tr.config, at);
      tr.seq_len = integer("seq_len");
      if (tr.config.contains("mask_id") && !tr.config.at("mask_id").is_null()) tr.mask_id = integer("mask_id");
      const std::string loss = at("loss").get<std::string>();
      if (loss == "mdlm_continuous_nelbo_token_mean") {
        tr.loss = TrajectoryLoss::ContinuousNelbo;
      } else if (loss == "mdlm_discrete_nelbo_token_mean") {
        tr.loss = TrajectoryLoss::DiscreteNelbo;
        tr.discrete_steps = static_cast<int>(integer("T"));
        MDLM_CHECK(tr.discrete_steps > 0, origin, ": config T = ", tr.discrete_steps, " must be positive");
      } else if (loss == "ar_token_mean_nll") {
        tr.loss = TrajectoryLoss::ArNll;
      } else {
        MDLM_FAIL(origin, ": config loss '", loss,
                  "' (expected mdlm_continuous_nelbo_token_mean, mdlm_discrete_nelbo_token_mean or ar_token_mean_nll)");
      }
      tr.steps = integer("steps");
      tr.accum = integer("accum");
      tr.adam.beta1 = number("beta1");
      tr.adam.beta2 = number("beta2");
      tr.adam.eps = number("adam_eps");
      tr.adam.weight_decay = number("weight_decay");
      tr.clip = number("clip");
      tr.ema = number("ema");
      tr.lr = at("lr").get<std::vector<double>>();
    } catch (const nlohmann::json::exception& e) {
      MDLM_FAIL(origin, ": bad trajectory config", key.empty() ? std::string() : " at '" + key + "'", ": ", e.what());
    }
    MDLM_CHECK(tr.model.dropout == 0.0f, origin, ": config dropout ", tr.model.dropout, " (a trajectory is replayed without dropout: 0)");
    MDLM_CHECK((tr.loss == TrajectoryLoss::ArNll) == tr.model.ar, origin, ": loss ", tr.config.at("loss").dump(),
               " with causal = ", tr.model.ar ? "true" : "false", " (the AR loss goes with the causal model and only with it)");
    MDLM_CHECK(tr.model.ar || tr.mask_id.has_value(), origin, ": an MDLM trajectory needs a mask_id");
    MDLM_CHECK(!tr.mask_id || (*tr.mask_id >= 0 && *tr.mask_id < tr.model.vocab), origin, ": mask_id ", tr.mask_id.value_or(-1),
               " outside the vocabulary of ", tr.model.vocab);
    MDLM_CHECK(tr.steps > 0 && tr.accum > 0, origin, ": steps ", tr.steps, " and accum ", tr.accum, " must be positive");
    MDLM_CHECK(static_cast<std::int64_t>(tr.lr.size()) == tr.steps, origin, ": config lr has ", tr.lr.size(),
               " values for ", tr.steps, " steps (one per step)");
    MDLM_CHECK(tr.seq_len > 1, origin, ": seq_len ", tr.seq_len);
    MDLM_CHECK(tr.clip >= 0, origin, ": clip ", tr.clip, " (0 = off)");
    MDLM_CHECK(tr.ema >= 0 && tr.ema < 1, origin, ": ema decay ", tr.ema, " outside [0, 1)");
    tr.model.validate();
    tr.check_names();
    // B from the first micro-batch; every micro-batch must have it.
    {
      const TensorInfo& x = tr.file.info(micro_key(1, 0, "x0"));
      MDLM_CHECK(x.shape.size() == 2 && x.shape[1] == tr.seq_len && x.shape[0] > 0, origin, ": ", micro_key(1, 0, "x0"),
                 " has shape ", SafeTensors::shape_str(x.shape), ", expected [B, ", tr.seq_len, "] (seq_len)");
      tr.batch = x.shape[0];
    }
    for (std::int64_t k = 1; k <= tr.steps; ++k) {
      tr.step_loss.push_back(tr.scalar(step_key(k, "loss")));
      tr.step_grad_norm.push_back(tr.scalar(step_key(k, "grad_norm")));
    }
    return tr;
  }

  // Micro-batch m of step k (1-based k), with shapes checked against [B, L] and [B].
  TrajectoryMicroBatch micro(std::int64_t k, std::int64_t m) const {
    TrajectoryMicroBatch mb;
    const TensorInfo& x = file.info(micro_key(k, m, "x0"));
    MDLM_CHECK(x.shape.size() == 2 && x.shape[1] == seq_len && x.shape[0] > 0, origin(), ": ", micro_key(k, m, "x0"),
               " has shape ", SafeTensors::shape_str(x.shape), ", expected [B, ", seq_len, "] (seq_len)");
    mb.batch = x.shape[0];
    const std::vector<std::int64_t> bl{mb.batch, seq_len}, b{mb.batch};
    mb.x0 = file.get<std::int32_t>(micro_key(k, m, "x0"), bl);
    mb.zt = file.get<std::int32_t>(micro_key(k, m, "zt"), bl);
    mb.t = file.get<double>(micro_key(k, m, "t"), b);
    mb.loss_mask = file.get<double>(micro_key(k, m, "loss_mask"), bl);
    for (std::size_t i = 0; i < mb.x0.size(); ++i) {
      MDLM_CHECK(mb.x0[i] >= 0 && mb.x0[i] < model.vocab && mb.zt[i] >= 0 && mb.zt[i] < model.vocab, origin(), ": ",
                 micro_key(k, m, "x0/zt"), "[", i, "] = ", mb.x0[i], "/", mb.zt[i], " outside the vocabulary of ", model.vocab);
      MDLM_CHECK(!model.ar || mb.zt[i] == mb.x0[i], origin(), ": ", micro_key(k, m, "zt"), "[", i, "] = ", mb.zt[i],
                 " differs from x0 (", mb.x0[i], "); for the AR loss zt equals x0");
    }
    return mb;
  }

  // A parameter-shaped buffer (ParamLayout order, zero padding) from `prefix` + "backbone.<name>".
  template <class S>
  std::vector<S> params(const ParamLayout& layout, const std::string& prefix) const {
    std::vector<S> out(static_cast<std::size_t>(layout.buffer_elements()), S(0));
    for (const ParamSpec& s : layout.specs()) {
      const auto v = file.get<double>(prefix + "backbone." + s.name, s.shape);
      for (std::size_t i = 0; i < v.size(); ++i) out[static_cast<std::size_t>(s.offset) + i] = static_cast<S>(v[i]);
    }
    return out;
  }

 private:
  double scalar(const std::string& name) const {
    const std::vector<double> v = file.get<double>(name);
    MDLM_CHECK(v.size() == 1, origin(), ": '", name, "' has ", v.size(), " elements, expected a scalar");
    return v[0];
  }

  // Every tensor the format names must be present, and nothing else.
  void check_names() const {
    const DiT net(model);
    std::set<std::string> expected;
    for (const ParamSpec& s : net.layout().specs()) {
      for (const char* prefix : {"init.", "final.", "final_ema."}) expected.insert(std::string(prefix) + "backbone." + s.name);
    }
    for (std::int64_t k = 1; k <= steps; ++k) {
      expected.insert(step_key(k, "loss"));
      expected.insert(step_key(k, "grad_norm"));
      for (std::int64_t m = 0; m < accum; ++m) {
        for (const char* w : {"x0", "zt", "t", "loss_mask"}) expected.insert(micro_key(k, m, w));
      }
    }
    for (const std::string& name : file.names()) {
      if (expected.count(name) == 0) {
        MDLM_FAIL(origin(), ": unknown tensor '", name, "' (not part of ", kTrajectoryFormat, " for this config: ", steps,
                  " steps, accum ", accum, ", ", model.ar ? "AR" : "MDLM", " parameters)");
      }
    }
    for (const std::string& name : expected) {
      if (!file.contains(name)) MDLM_FAIL(origin(), ": missing tensor '", name, "'");
    }
  }
};

// Pass/fail bounds, relative: losses and norms to the recorded value, weights to each tensor's
// largest magnitude.
struct TrajectoryTolerance {
  double loss = 0, grad_norm = 0, weights = 0;
  bool check_weights = true;  // bf16: the loss curve only
};

// The tolerance for a replay whose model runs in T (bf16: CUDA bf16-mixed, fp32 master weights).
//   fp64: 1e-10 on losses and norms, 1e-9 on weights (DESIGN §6; measured ~1e-13).
//   fp32: 1e-4 on losses, 1e-3 on norms and weights. One fp32 pass matches the fp64 reference
//         to ~1e-6 (the golden fixtures); over the steps the rounding differences in the
//         gradients reach the weights through AdamW, which divides each gradient element by its
//         own running RMS, so an element whose gradient is small (where fp32's absolute rounding,
//         ~1e-7 of the largest gradient, is a large part of it) moves in a slightly different
//         direction, by up to lr per step. Measured worst on the committed trajectories (30-40
//         steps): losses 1.2e-6, norms 1.9e-5, weights 9.2e-6; on a 50-step run at lr 1e-2
//         without clipping: 2.9e-6, 4.2e-5, 1.4e-4. The bounds leave room for longer runs and
//         larger learning rates and stay far below what a wrong optimizer gives (bias
//         correction off: losses off by 7e-2 to 2e-1).
//   bf16: each step's loss within 5e-2 of the reference (the check-fixture band for one pass;
//         the master weights stay fp32), norms within 1e-1; weights are reported, not gated.
template <class T>
TrajectoryTolerance trajectory_tolerance() {
  if constexpr (std::is_same_v<T, double>) return {1e-10, 1e-10, 1e-9, true};
  else if constexpr (std::is_same_v<T, float>) return {1e-4, 1e-3, 1e-3, true};
  else return {5e-2, 1e-1, 0.0, false};
}

struct TrajectoryReport {
  struct Worst {
    double rel = 0, got = 0, want = 0;
    std::int64_t step = 0;  // 1-based
    std::string tensor;     // weights: the worst parameter
  };
  std::vector<double> loss, grad_norm;  // computed, per step
  Worst loss_err, norm_err, final_err, ema_err;
  TrajectoryTolerance tol;

  bool loss_ok() const { return loss_err.rel <= tol.loss; }
  bool norm_ok() const { return norm_err.rel <= tol.grad_norm; }
  bool final_ok() const { return !tol.check_weights || final_err.rel <= tol.weights; }
  bool ema_ok() const { return !tol.check_weights || ema_err.rel <= tol.weights; }
  bool pass() const { return loss_ok() && norm_ok() && final_ok() && ema_ok(); }

  nlohmann::json to_json() const {
    auto worst = [](const Worst& w, double tol, bool ok, bool per_step) {
      nlohmann::json j = {{"worst_rel", w.rel}, {"tolerance", tol}, {"pass", ok}};
      if (per_step) {
        j["step"] = w.step;
        j["got"] = w.got;
        j["want"] = w.want;
      } else {
        j["step"] = w.step;
        j["tensor"] = w.tensor;
      }
      return j;
    };
    return {{"loss", worst(loss_err, tol.loss, loss_ok(), true)},
            {"grad_norm", worst(norm_err, tol.grad_norm, norm_ok(), true)},
            {"final_weights", worst(final_err, tol.weights, final_ok(), false)},
            {"final_ema", worst(ema_err, tol.weights, ema_ok(), false)},
            {"pass", pass()}};
  }
};

namespace trajectory_detail {
inline double rel_err(double got, double want) {
  if (!std::isfinite(got)) return INFINITY;
  const double d = std::abs(got - want);
  return want != 0 ? d / std::abs(want) : d;
}

// Worst over the parameters of max |got - want| / max |want| (per tensor).
template <class S>
TrajectoryReport::Worst compare_params(const ParamLayout& layout, const std::vector<S>& got, const std::vector<double>& want,
                                       std::int64_t step) {
  TrajectoryReport::Worst w;
  w.step = step;
  for (const ParamSpec& s : layout.specs()) {
    double diff = 0, scale = 0;
    for (std::int64_t i = 0; i < s.numel; ++i) {
      const auto at = static_cast<std::size_t>(s.offset + i);
      const double g = static_cast<double>(got[at]);
      diff = std::max(diff, std::isfinite(g) ? std::abs(g - want[at]) : INFINITY);
      scale = std::max(scale, std::abs(want[at]));
    }
    const double rel = scale > 0 ? diff / scale : diff;
    if (w.tensor.empty() || rel > w.rel) {
      w.rel = rel;
      w.tensor = s.name;
    }
  }
  return w;
}
}  // namespace trajectory_detail

// Replays `tr` on backend B with model values T and parameter gradients G: the initial weights
// become the master weights and the EMA (in optimizer_state_t<T>), then every step runs through
// TrainStep (the trainer's step: the mean of the micro-batch losses, global norm, clipping,
// AdamW, EMA) with the recorded x0, z_t, t and loss masks and the recorded learning rate.
template <class B, class T, class G = T>
TrajectoryReport replay_trajectory(B& ctx, const Trajectory& tr) {
  using S = optimizer_state_t<T>;
  const DiT model(tr.model);
  const ParamLayout& layout = model.layout();
  const std::int64_t n = layout.buffer_elements();
  ParamStore<B, T, G> store(layout);
  AdamW<B, S> opt(n, tr.adam, tr.ema);
  {
    const std::vector<S> init = tr.params<S>(layout, "init.");
    opt.load(ctx, init, init);
    std::vector<T> values(static_cast<std::size_t>(n));
    cast_from_master(Host{}, n, init.data(), values.data());
    upload_into(ctx, values.data(), n, store.values().data());
  }
  TrainStep<B, T, G> stepper(ctx, store, opt);
  TrajectoryReport rep;
  rep.tol = trajectory_tolerance<T>();

  auto run = [&](auto&& micro_loss) {
    for (std::int64_t k = 1; k <= tr.steps; ++k) {
      std::vector<TrajectoryMicroBatch> micro;
      for (std::int64_t m = 0; m < tr.accum; ++m) micro.push_back(tr.micro(k, m));
      const auto g = stepper.gradient(tr.accum, [&](Tape<B, T, G>& tape, std::int64_t m) {
        tape.options = {};  // no dropout
        const TrajectoryMicroBatch& mb = micro[static_cast<std::size_t>(m)];
        return micro_loss(tape, mb, TokenBatch{mb.x0.data(), mb.batch, tr.seq_len, mb.loss_mask.data()});
      });
      rep.loss.push_back(g.loss);
      rep.grad_norm.push_back(g.norm);
      const auto idx = static_cast<std::size_t>(k - 1);
      const double el = trajectory_detail::rel_err(g.loss, tr.step_loss[idx]);
      const double en = trajectory_detail::rel_err(g.norm, tr.step_grad_norm[idx]);
      if (el > rep.loss_err.rel || k == 1) rep.loss_err = {el, g.loss, tr.step_loss[idx], k, {}};
      if (en > rep.norm_err.rel || k == 1) rep.norm_err = {en, g.norm, tr.step_grad_norm[idx], k, {}};
      stepper.apply(tr.lr[idx], g.norm, tr.clip);
    }
  };
  if (tr.loss == TrajectoryLoss::ArNll) {
    run([&](Tape<B, T, G>& tape, const TrajectoryMicroBatch&, const TokenBatch& tb) {
      return Autoregressive{}.loss(tape, model, store.params(), tb);
    });
  } else {
    DiffusionOptions opt_d;
    opt_d.mask_id = *tr.mask_id;
    opt_d.discrete_steps = tr.discrete_steps;
    with_schedule(tr.config, tr.origin(), [&](auto schedule) {
      const MaskedDiffusion<decltype(schedule)> objective(schedule, opt_d);
      run([&](Tape<B, T, G>& tape, const TrajectoryMicroBatch& mb, const TokenBatch& tb) {
        return objective.loss_at(tape, model, store.params(), tb, mb.t, mb.zt);
      });
    });
  }
  const std::vector<S> master = download(ctx, MatrixView<const S, B>(opt.master(), 1, n));
  const std::vector<S> ema = download(ctx, MatrixView<const S, B>(opt.ema(), 1, n));
  rep.final_err = trajectory_detail::compare_params(layout, master, tr.params<double>(layout, "final."), tr.steps);
  rep.ema_err = trajectory_detail::compare_params(layout, ema, tr.params<double>(layout, "final_ema."), tr.steps);
  return rep;
}

}  // namespace mdlm
