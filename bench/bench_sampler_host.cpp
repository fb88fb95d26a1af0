// Sampler throughput on the Host (the CPU path of `mdlm sample`) for the main job's model shape
// (byte vocabulary of 260, 4 blocks x 128, 4 heads; random weights): 4 sequences of 64 tokens,
// 128 steps (steps > length, where caching pays). Per-sequence `sample()` (the CLI's Host path:
// every sequence its own forward pass, so cached and uncached agree bit for bit) beside the
// batched loop `sample_batched()` (one forward pass for the whole batch, the GPU path's
// structure). Reports generated tokens/s and network evaluations per sequence.
//   build/bench/mdlm_bench_sampler_host
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "mdlm/mdlm.hpp"
#include "train_step.hpp"

namespace {

using namespace mdlm;
constexpr std::int64_t kN = 4, kLen = 64, kSteps = 128, kVocab = 260, kMask = 259;

struct MainJobModel {
  Host host;
  DiT model{[] {
    DiTConfig c;
    c.vocab = kVocab;
    c.hidden = 128;
    c.blocks = 4;
    c.heads = 4;
    c.dropout = 0.0f;
    return c;
  }()};
  ParamStore<Host, float> store{model.layout()};
  MainJobModel() { bench::init_for_benchmark(host, model, store); }
};

template <class S>
void run(benchmark::State& state, S sampler, bool batched) {
  MainJobModel m;
  SamplerSettings cfg;
  cfg.steps = kSteps;
  const std::vector<std::int32_t> init(static_cast<std::size_t>(kN * kLen), static_cast<std::int32_t>(kMask));
  const auto d = model_denoiser(m.host, m.model, m.store, kMask);
  double seconds = 0, nfe = 0;
  for (auto _ : state) {
    const SampleResult r = batched ? sample_batched(m.host, m.model, m.store, kMask, LogLinearSchedule{}, sampler, cfg, init, kN, kLen)
                                   : sample(d, LogLinearSchedule{}, sampler, cfg, init, kN, kLen);
    state.SetIterationTime(r.seconds);
    seconds += r.seconds;
    nfe = static_cast<double>(r.nfe_sequences) / kN;
  }
  state.counters["tokens_per_s"] = static_cast<double>(kN * kLen) * static_cast<double>(state.iterations()) / seconds;
  state.counters["nfe_per_seq"] = nfe;
}

void BM_per_sequence_ancestral(benchmark::State& s) { run(s, Ancestral{}, false); }
void BM_per_sequence_cached(benchmark::State& s) { run(s, Cached{}, false); }
void BM_per_sequence_first_hit(benchmark::State& s) { run(s, FirstHit{}, false); }
void BM_batched_ancestral(benchmark::State& s) { run(s, Ancestral{}, true); }
void BM_batched_cached(benchmark::State& s) { run(s, Cached{}, true); }
void BM_batched_confidence(benchmark::State& s) { run(s, Confidence{}, true); }
void BM_batched_first_hit(benchmark::State& s) { run(s, FirstHit{}, true); }

}  // namespace

BENCHMARK(BM_per_sequence_ancestral)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_per_sequence_cached)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_per_sequence_first_hit)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_batched_ancestral)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_batched_cached)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_batched_confidence)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_batched_first_hit)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

#include "host_bench_main.hpp"
