#pragma once
// One training step of the backbone — forward, SUBS loss, backward — on any backend, timed by
// Google Benchmark. Shared by bench_train_step_host.cpp and bench_train_step_cuda.cu.
// Reports tokens/s, achieved TFLOP/s with FLOPs per token = 6 N_matmul + 12 L d T (the usual
// MFU accounting) and, on CUDA, MFU against the H100/H200 dense bf16 peak of 989.4 TFLOP/s.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "mdlm/mdlm.hpp"

namespace mdlm::bench {

inline constexpr double kH100PeakTflops = 989.4;

template <class B, class T, class G, class Sync>
void train_step(benchmark::State& state, B& ctx, const DiTConfig& cfg, std::int64_t batch, std::int64_t seq,
                double peak_tflops, Sync&& sync) {
  DiT model(cfg);
  ParamStore<B, T, G> store(model.layout());
  {
    ParamStore<Host, float> init(model.layout());
    model.init(init, 1);
    // Non-zero adaLN and head weights so the whole graph does real work.
    Philox rng{2};
    std::vector<T> host(static_cast<std::size_t>(model.layout().buffer_elements()));
    for (std::size_t i = 0; i < host.size(); ++i) {
      host[i] = from_compute<T>(static_cast<compute_t<T>>(init.values().data()[i] +
                                                          0.02f * (rng.uniform_float(Purpose::Test, 0, i) - 0.5f)));
    }
    upload_into(ctx, host.data(), model.layout().buffer_elements(), store.values().data());
  }
  const std::int64_t n = batch * seq;
  const std::int32_t mask_id = static_cast<std::int32_t>(cfg.vocab - 1);
  std::vector<std::int32_t> x0(static_cast<std::size_t>(n)), zt(static_cast<std::size_t>(n));
  Philox rng{3};
  for (std::int64_t i = 0; i < n; ++i) {
    x0[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(rng.block(Purpose::Test, 1, static_cast<std::uint64_t>(i)).v[0] % static_cast<std::uint32_t>(mask_id));
    zt[static_cast<std::size_t>(i)] = rng.uniform_float(Purpose::Test, 2, static_cast<std::uint64_t>(i)) < 0.5f ? mask_id : x0[static_cast<std::size_t>(i)];
  }
  std::vector<double> weight(static_cast<std::size_t>(batch), 2.0), mask(static_cast<std::size_t>(n), 1.0);
  SubsTargets targets = SubsTargets::make(x0, zt, mask, weight, seq, mask_id);
  auto d_ids = upload(ctx, zt);
  auto d_target = upload(ctx, targets.target);
  auto d_coef = upload(ctx, targets.coef);
  auto one = upload(ctx, std::vector<T>{from_compute<T>(1)});
  Tape<B, T, G> tape(ctx);
  tape.options = {true, 4, 0};
  auto step = [&] {
    tape.reset();
    Var<T, B> logits = model.forward(tape, store.params(), DiTInputs{d_ids.data(), zt.data(), batch, seq, nullptr});
    Var<T, B> loss = CrossEntropyOp<B, T, G>::forward(tape, logits, {d_target.data(), d_coef.data(), mask_id});
    tape.backward(loss, MatrixView<const T, B>(one.data(), 1, 1));
    sync();
  };
  step();  // warm-up: arenas reach their size, GEMM plans are built
  for (auto _ : state) {
    step();
    ++tape.options.step;
  }
  const double tokens = static_cast<double>(n) * static_cast<double>(state.iterations());
  const double flops = tokens * model.train_flops_per_token(seq);
  state.counters["tokens"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["TFLOP"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsRate);
  if (peak_tflops > 0) state.counters["MFU"] = benchmark::Counter(flops / 1e12 / peak_tflops, benchmark::Counter::kIsRate);
}

}  // namespace mdlm::bench
