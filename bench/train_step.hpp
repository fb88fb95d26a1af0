#pragma once
// One training step — forward, SUBS loss (or AR NLL), backward — on any backend, timed by
// Google Benchmark. Shared by bench_train_step_host.cpp and bench_train_step_cuda.cu.
// Reports tokens/s, achieved TFLOP/s with FLOPs per token = 6 N_matmul + 12 L d T (the usual
// MFU accounting) and, on CUDA, MFU against the H100/H200 dense bf16 peak of 989.4 TFLOP/s.

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mdlm/mdlm.hpp"

namespace mdlm::bench {

inline constexpr double kH100PeakTflops = 989.4;

// DESIGN §1 init plus a little noise, so that adaLN and the head (zero at init) do real work.
template <class B, class T, class G>
void init_for_benchmark(B& ctx, const DiT& model, ParamStore<B, T, G>& store) {
  ParamStore<Host, float> init(model.layout());
  model.init(init, 1);
  Philox rng{2};
  std::vector<T> host(static_cast<std::size_t>(model.layout().buffer_elements()));
  for (std::size_t i = 0; i < host.size(); ++i) {
    host[i] = from_compute<T>(static_cast<compute_t<T>>(init.values().data()[i] +
                                                        0.02f * (rng.uniform_float(Purpose::Test, 0, i) - 0.5f)));
  }
  upload_into(ctx, host.data(), model.layout().buffer_elements(), store.values().data());
}

// The step under test: an MDLM step (MaskedDiffusion, log-linear, head trimmed to the masked
// rows unless trim_head is false) or, for an AR config, an AR step, with its weights and tokens.
template <class B, class T, class G>
struct StepUnderTest {
  DiT model;
  ParamStore<B, T, G> store;
  std::int64_t batch, seq;
  bool trim_head;
  std::vector<std::int32_t> x0;
  Buffer<T, B> one;
  Tape<B, T, G> tape;
  std::int64_t head_rows = 0;

  StepUnderTest(B& ctx, const DiTConfig& cfg, std::int64_t batch_, std::int64_t seq_, bool trim)
      : model(cfg), store(model.layout()), batch(batch_), seq(seq_), trim_head(trim),
        x0(static_cast<std::size_t>(batch_ * seq_)), one(upload(ctx, std::vector<T>{from_compute<T>(1)})), tape(ctx) {
    init_for_benchmark(ctx, model, store);
    const std::uint32_t mask_id = static_cast<std::uint32_t>(cfg.vocab - 1);
    Philox rng{3};
    for (std::size_t i = 0; i < x0.size(); ++i) x0[i] = static_cast<std::int32_t>(rng.block(Purpose::Test, 1, i).v[0] % mask_id);
    tape.options = {true, 4, 0};
  }
  // One forward + loss + backward; `phase(name)` is called before the forward and the backward.
  template <class Phase>
  void run(Phase&& phase) {
    tape.reset();
    phase("forward");
    if (model.config().ar) {
      auto out = Autoregressive{}.loss(tape, model, store.params(), TokenBatch{x0.data(), batch, seq, nullptr});
      phase("backward");
      tape.backward(out.loss, MatrixView<const T, B>(one.data(), 1, 1));
      head_rows += out.head_rows;
    } else {
      DiffusionOptions opt;
      opt.mask_id = model.config().vocab - 1;
      opt.trim_head = trim_head;
      MaskedDiffusion<LogLinearSchedule> objective(LogLinearSchedule{}, opt);
      auto out = objective.loss(tape, model, store.params(), TokenBatch{x0.data(), batch, seq, nullptr}, Philox{5},
                                tape.options.step);
      phase("backward");
      tape.backward(out.loss, MatrixView<const T, B>(one.data(), 1, 1));
      head_rows += out.head_rows;
    }
    ++tape.options.step;
  }
  void run() {
    run([](const char*) {});
  }
};

template <class B, class T, class G, class Sync>
void train_step(benchmark::State& state, B& ctx, const DiTConfig& cfg, std::int64_t batch, std::int64_t seq,
                double peak_tflops, bool trim_head, Sync&& sync) {
  StepUnderTest<B, T, G> s(ctx, cfg, batch, seq, trim_head);
  const DiT& model = s.model;
  const std::int64_t n = batch * seq;
  s.run();  // warm-up: arenas reach their size, GEMM plans are built
  sync();
  s.head_rows = 0;
  for (auto _ : state) {
    s.run();
    sync();
  }
  const std::int64_t head_rows = s.head_rows;
  const double iters = static_cast<double>(state.iterations());
  const double tokens = static_cast<double>(n) * iters;
  const double flops = tokens * model.train_flops_per_token(seq);
  const double executed = iters * model.executed_train_flops(seq, n, 0) + static_cast<double>(head_rows) * 6 * model.head_matmul_params();
  state.counters["tokens"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["TFLOP"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsRate);
  state.counters["TFLOP_exec"] = benchmark::Counter(executed / 1e12, benchmark::Counter::kIsRate);
  state.counters["head_rows_frac"] = static_cast<double>(head_rows) / tokens;
  if (peak_tflops > 0) {
    // MFU: model FLOPs (6 N + 12 L d T per token, full head) per second over peak. MFU_exec:
    // the FLOPs actually executed (head on the masked rows only) over peak.
    state.counters["MFU"] = benchmark::Counter(flops / 1e12 / peak_tflops, benchmark::Counter::kIsRate);
    state.counters["MFU_exec"] = benchmark::Counter(executed / 1e12 / peak_tflops, benchmark::Counter::kIsRate);
  }
}

// The whole optimizer step as the trainer takes it: TrainStep's device path (forward, SUBS loss,
// backward, gradient norm, clipping, AdamW, EMA), the status read once every kStepsPerRead steps,
// and each step after the first a captured CUDA graph (StepGraph<B>; `graphs` false: eager; the
// Host always runs eagerly). One benchmark iteration is kStepsPerRead steps and one read, so the
// host runs ahead of the device as it does in training. The label says why a capture failed.
inline constexpr std::int64_t kStepsPerRead = 10;

template <class B, class T, class G, class Sync>
void whole_step(benchmark::State& state, B& ctx, const DiTConfig& cfg, std::int64_t batch, std::int64_t seq,
                double peak_tflops, bool graphs, Sync&& sync) {
  using S = optimizer_state_t<T>;
  const DiT model(cfg);
  const std::int64_t n = model.layout().buffer_elements(), tokens_per_step = batch * seq;
  ParamStore<B, T, G> store(model.layout());
  init_for_benchmark(ctx, model, store);
  std::vector<S> master;
  for (const T& v : download(ctx, MatrixView<const T, B>(store.values().data(), 1, n))) master.push_back(static_cast<S>(to_compute(v)));
  AdamW<B, S> opt(n, AdamWConfig{}, 0.9999);
  opt.load(ctx, master, master);
  TrainStep<B, T, G> step(ctx, store, opt);
  step.reserve_window(kStepsPerRead);
  StepGraph<B> graph(ctx, graphs);
  std::vector<std::int32_t> x0(static_cast<std::size_t>(tokens_per_step));
  Philox rng{3};
  for (std::size_t i = 0; i < x0.size(); ++i) {
    x0[i] = static_cast<std::int32_t>(rng.block(Purpose::Test, 1, i).v[0] % static_cast<std::uint32_t>(cfg.vocab - 1));
  }
  DiffusionOptions o;
  o.mask_id = cfg.vocab - 1;
  const MaskedDiffusion<LogLinearSchedule> objective(LogLinearSchedule{}, o);
  std::int64_t k = 0, head_rows = 0;
  auto one_step = [&] {
    ++k;
    const std::int64_t updates = opt.steps(), unread = step.unread(), rows = head_rows;
    graph.run(
        [&] {
          step.device_gradient(1, [&](Tape<B, T, G>& tape, std::int64_t) {
            tape.options = {true, 4, static_cast<std::uint32_t>(k)};
            auto out = objective.loss(tape, model, store.params(), TokenBatch{x0.data(), batch, seq, nullptr}, Philox{5},
                                      static_cast<std::uint32_t>(k));
            head_rows += out.head_rows;
            return out;
          }, k, 1.0);
          step.device_apply(3e-4);
        },
        [&] { step.tape().reset(); },
        [&] {
          opt.set_steps(updates);
          step.set_unread(unread);
          head_rows = rows;
        });
  };
  for (std::int64_t i = 0; i < kStepsPerRead; ++i) one_step();  // warm-up: arenas, plans, the first graphs
  (void)step.read_status();
  sync();
  head_rows = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    for (std::int64_t i = 0; i < kStepsPerRead; ++i) one_step();
    if (step.read_status().bad) state.SkipWithError("a step's loss or gradient norm was not finite");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double steps = static_cast<double>(state.iterations() * kStepsPerRead);
  const double tokens = static_cast<double>(tokens_per_step) * steps;
  const double flops = tokens * model.train_flops_per_token(seq);
  const double executed =
      steps * model.executed_train_flops(seq, tokens_per_step, 0) + static_cast<double>(head_rows) * 6 * model.head_matmul_params();
  state.counters["tokens"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["ms_per_step"] = steps > 0 ? 1e3 * seconds / steps : 0.0;
  state.counters["graph_steps"] = static_cast<double>(graph.stats().graph_steps);
  if (peak_tflops > 0) {
    state.counters["MFU"] = benchmark::Counter(flops / 1e12 / peak_tflops, benchmark::Counter::kIsRate);
    state.counters["MFU_exec"] = benchmark::Counter(executed / 1e12 / peak_tflops, benchmark::Counter::kIsRate);
  }
  if (!graph.stats().note.empty()) state.SetLabel(graph.stats().note);
}

// The per-range breakdown of `steps` steps (after one warm-up step) with StepProfile on
// `clock`: milliseconds per op and layer, forward and backward, against the step budget of
// `goal_tokens_per_s` (0: none). Returns the table.
template <class B, class T, class G, class Clock, class Sync>
std::string profile_steps(B& ctx, const DiTConfig& cfg, std::int64_t batch, std::int64_t seq, bool trim_head,
                          std::int64_t steps, Clock clock, double goal_tokens_per_s, Sync&& sync) {
  StepUnderTest<B, T, G> s(ctx, cfg, batch, seq, trim_head);
  s.run();
  sync();
  StepProfile<Clock> profile(std::move(clock));
  s.tape.ranges = profile.hook();
  double total_ms = 0;
  for (std::int64_t k = 0; k < steps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    s.run([&](const char* phase) { profile.phase(phase); });
    sync();
    total_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    profile.end_step();
  }
  const double step_ms = total_ms / static_cast<double>(steps);
  const double budget_ms = goal_tokens_per_s > 0 ? 1e3 * static_cast<double>(batch * seq) / goal_tokens_per_s : 0.0;
  return profile.table(step_ms, budget_ms);
}

}  // namespace mdlm::bench
