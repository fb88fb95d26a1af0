// Training trajectories (io/trajectory.hpp): the fp64 optimizer state, PyTorch's clipping and
// AdamW arithmetic, the replay of committed mdlm-trajectory-v1 files through TrainStep, and the
// reader's errors on malformed files.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/mdlm.hpp"

using namespace mdlm;

namespace {

const std::string kDir = std::string(MDLM_TEST_REPO) + "/tests/data/trajectories/";

// A copy of a trajectory file, in memory, with its config and tensors edited.
SafeTensors edited(const std::string& path, const std::function<void(nlohmann::json&)>& edit_config,
                   const std::function<void(SafeTensorsWriter&)>& extra = {}, const std::string& drop = "",
                   const std::function<void(const std::string&, std::vector<std::int64_t>&)>& edit_ints = {}) {
  const SafeTensors f = SafeTensors::read(path);
  SafeTensorsWriter w;
  for (const std::string& name : f.names()) {
    if (name == drop) continue;
    const TensorInfo& info = f.info(name);
    if (info.dtype == DType::I64) {
      std::vector<std::int64_t> v = f.get<std::int64_t>(name);
      if (edit_ints) edit_ints(name, v);
      w.add(name, info.shape, v.data());
    } else {
      const std::vector<double> v = f.get<double>(name);
      w.add(name, info.shape, v.data());
    }
  }
  if (extra) extra(w);
  nlohmann::json cfg = nlohmann::json::parse(f.metadata().at("config"));
  edit_config(cfg);
  w.set_metadata("format", kTrajectoryFormat);
  w.set_metadata("config", cfg.dump());
  return SafeTensors::parse(w.serialize(), "edited.safetensors");
}

void keep(nlohmann::json&) {}

}  // namespace

TEST_CASE("AdamW in fp64: the state is fp64 and one step is PyTorch's AdamW to the last bits") {
  static_assert(std::is_same_v<optimizer_state_t<double>, double>);
  static_assert(std::is_same_v<optimizer_state_t<float>, float>);
  static_assert(std::is_same_v<optimizer_state_t<bf16>, float>);
  Host host;
  const AdamWConfig cfg{0.0, 0.9, 0.999, 1e-8, 0.1};
  AdamW<Host, double> opt(3, cfg, 0.999);
  const std::vector<double> w0{0.3, -1.7, 1e-3};
  opt.load(host, w0, w0);
  std::vector<double> value(3), grad{0.25, -3.0, 1e-9};
  const double lr1 = 1e-2, lr2 = 2e-2, clip = 1.5;
  // PyTorch: clip_grad_norm_, then AdamW (p *= 1 - lr wd; lerp/addcmul moments; bias correction
  // with the step count), then the EMA with n counting this update.
  std::vector<double> p = w0, m(3, 0.0), v(3, 0.0), ema = w0;
  for (int k = 1; k <= 2; ++k) {
    const double lr = k == 1 ? lr1 : lr2;
    const double norm = opt.grad_norm(host, grad.data());
    CHECK(norm == doctest::Approx(std::sqrt(grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2])).epsilon(1e-15));
    opt.update(host, grad.data(), value.data(), lr, norm, clip);
    const double c = std::min(1.0, clip / (norm + 1e-6));
    const double d = std::min(0.999, (1.0 + k) / (10.0 + k));
    for (std::size_t i = 0; i < 3; ++i) {
      const double g = grad[i] * c;
      p[i] *= 1 - lr * cfg.weight_decay;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, k)), vh = v[i] / (1 - std::pow(0.999, k));
      p[i] -= lr * mh / (std::sqrt(vh) + 1e-8);
      ema[i] = d * ema[i] + (1 - d) * p[i];
      CHECK(std::abs(opt.master()[i] - p[i]) <= 1e-15 * std::abs(p[i]) + 1e-18);
      CHECK(value[i] == opt.master()[i]);
      CHECK(std::abs(opt.m()[i] - m[i]) <= 1e-15 * std::abs(m[i]));
      CHECK(std::abs(opt.v()[i] - v[i]) <= 1e-15 * std::abs(v[i]));
      CHECK(std::abs(opt.ema()[i] - ema[i]) <= 1e-15 * std::abs(ema[i]) + 1e-18);
    }
    grad = {-0.5, 0.125, 2e-9};
  }
  // Clipping: PyTorch's multiplier (the 1e-6 counts), and 0 turns clipping off.
  CHECK(clip_multiplier(4.0, 1.0) == 1.0 / (4.0 + 1e-6));
  CHECK(clip_multiplier(0.5, 1.0) == 1.0);
  CHECK(clip_multiplier(1.0, 1.0) < 1.0);  // at the threshold it already scales by 1/(1 + 1e-6)
  CHECK(clip_multiplier(1e9, 0.0) == 1.0);
}

TEST_CASE("trajectory: committed fp64 PyTorch runs replay through TrainStep within 1e-10 (fp64) and the fp32 bounds") {
  for (const char* name : {"mdlm_cosine_timecond_pad_accum3", "ar_pad_accum3", "mdlm_discrete_T8_cosine_pad"}) {
    CAPTURE(name);
    const Trajectory tr = Trajectory::load(kDir + name + ".safetensors");
    CHECK(tr.steps >= 30);
    Host host;
    const TrajectoryReport r64 = replay_trajectory<Host, double>(host, tr);
    CHECK(r64.pass());
    CHECK(r64.loss_err.rel < 1e-13);
    CHECK(r64.norm_err.rel < 1e-12);
    CHECK(r64.final_err.rel < 1e-12);
    CHECK(r64.ema_err.rel < 1e-12);
    CHECK(r64.loss.size() == static_cast<std::size_t>(tr.steps));
    const TrajectoryReport r32 = replay_trajectory<Host, float>(host, tr);
    CHECK(r32.pass());
    CHECK(r32.loss_err.rel > 1e-12);  // it really ran in fp32
  }
}

TEST_CASE("trajectory: the replay detects a changed run (one learning rate, the EMA decay, one token)") {
  const std::string path = kDir + "mdlm_loglinear_accum1.safetensors";
  Host host;
  {  // the lr of step 10 off by 1e-6 relative: the steps after it and the weights drift
    const Trajectory tr = Trajectory::from(edited(path, [](nlohmann::json& c) { c["lr"][9] = c["lr"][9].get<double>() * (1 + 1e-6); }));
    const TrajectoryReport r = replay_trajectory<Host, double>(host, tr);
    CHECK_FALSE(r.pass());
    CHECK(r.loss_err.step > 10);
    CHECK(r.final_err.rel > 1e-9);
  }
  {  // EMA decay 0.5 instead of 0.999 (the warm-up (1+n)/(10+n) passes 0.5 at n = 8): only the EMA is off
    const Trajectory tr = Trajectory::from(edited(path, [](nlohmann::json& c) { c["ema"] = 0.5; }));
    const TrajectoryReport r = replay_trajectory<Host, double>(host, tr);
    CHECK(r.loss_ok());
    CHECK(r.final_ok());
    CHECK_FALSE(r.ema_ok());
  }
  {  // one token of step 7's z_t changed: that step's loss is the first one off
    const Trajectory tr = Trajectory::from(edited(path, keep, {}, "", [](const std::string& name, std::vector<std::int64_t>& v) {
      if (name == "step.7.micro.0.zt") v[3] = v[3] == 40 ? 1 : 40;
    }));
    const TrajectoryReport r = replay_trajectory<Host, double>(host, tr);
    CHECK_FALSE(r.loss_ok());
    for (std::size_t k = 0; k < 6; ++k) CHECK(std::abs(r.loss[k] - tr.step_loss[k]) <= 1e-13 * std::abs(tr.step_loss[k]));
    CHECK(std::abs(r.loss[6] - tr.step_loss[6]) > 1e-6 * std::abs(tr.step_loss[6]));
  }
}

TEST_CASE("trajectory reader: unknown or missing tensors, bad config values and bad tokens are errors naming them") {
  const std::string path = kDir + "ar_pad_accum3.safetensors";
  auto fails = [](const SafeTensors& f, const std::string& what) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(Trajectory::from(f), doctest::Contains(what.c_str()), Error);
  };
  const double one = 1.0;
  fails(edited(path, keep, [&](SafeTensorsWriter& w) { w.add("step.31.loss", {}, &one); }), "unknown tensor 'step.31.loss'");
  fails(edited(path, keep, [&](SafeTensorsWriter& w) { w.add("step.1.micro.3.t", {2}, std::vector<double>{0, 0}.data()); }),
        "unknown tensor 'step.1.micro.3.t'");
  fails(edited(path, keep, [&](SafeTensorsWriter& w) { w.add("init.backbone.sigma_map.mlp.0.bias", {1}, &one); }),
        "unknown tensor 'init.backbone.sigma_map.mlp.0.bias'");
  fails(edited(path, keep, {}, "final_ema.backbone.blocks.0.mlp.0.bias"), "missing tensor 'final_ema.backbone.blocks.0.mlp.0.bias'");
  fails(edited(path, keep, {}, "step.30.micro.2.loss_mask"), "missing tensor 'step.30.micro.2.loss_mask'");
  fails(edited(path, [](nlohmann::json& c) { c["lr"].erase(0); }), "config lr has 29 values for 30 steps");
  fails(edited(path, [](nlohmann::json& c) { c.erase("beta2"); }), "config has no 'beta2'");
  fails(edited(path, [](nlohmann::json& c) { c["adam_eps"] = "small"; }), "at 'adam_eps'");
  fails(edited(path, [](nlohmann::json& c) { c["loss"] = "mse"; }), "config loss 'mse'");
  fails(edited(path, [](nlohmann::json& c) { c["loss"] = "mdlm_continuous_nelbo_token_mean"; }), "causal = true");
  fails(edited(path, [](nlohmann::json& c) { c["dropout"] = 0.1; }), "config dropout 0.1");
  const Trajectory bad_zt = Trajectory::from(edited(path, keep, {}, "", [](const std::string& name, std::vector<std::int64_t>& v) {
    if (name == "step.2.micro.1.zt") v[5] = (v[5] + 1) % 38;
  }));
  CHECK_THROWS_WITH_AS(bad_zt.micro(2, 1), doctest::Contains("step.2.micro.1.zt[5]"), Error);
  const Trajectory bad_id = Trajectory::from(edited(path, keep, {}, "", [](const std::string& name, std::vector<std::int64_t>& v) {
    if (name == "step.3.micro.0.x0") v[0] = 1000;
  }));
  CHECK_THROWS_WITH_AS(bad_id.micro(3, 0), doctest::Contains("outside the vocabulary of 38"), Error);
  CHECK_THROWS_WITH_AS(Trajectory::load(std::string(MDLM_TEST_FIXTURES) + "/mdlm_tiny.safetensors"),
                       doctest::Contains("expected mdlm-trajectory-v1"), Error);
}
