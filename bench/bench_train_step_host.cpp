// Host training step: forward + SUBS loss + backward of the `tiny` preset (8 x 512 x 8 heads,
// GPT-2 vocabulary + mask) at B = 2, T = 128 in fp32, with the output head trimmed to the masked
// rows (/1) and full (/0); the main job's model (scripts/main-job.sh: hidden 128, 4 blocks,
// 4 heads, cond 64, byte vocabulary of 260, dropout 0.1) at B = 16, L = 128; and a micro model
// used as CI smoke run.
//   build/bench/mdlm_bench_train_step_host [--benchmark_filter=main_job]
#include "train_step.hpp"

namespace {

void BM_train_step_tiny_preset(benchmark::State& state) {
  mdlm::Host host;
  mdlm::bench::train_step<mdlm::Host, float, float>(state, host, mdlm::DiTConfig::preset("tiny", 50258), 2, 128, 0.0,
                                                     state.range(0) != 0, [] {});
}

// A small DiT of the given sizes (the bytes model of the main job, a micro model).
mdlm::DiTConfig small_dit(std::int64_t vocab, std::int64_t hidden, std::int64_t blocks, std::int64_t cond_dim) {
  mdlm::DiTConfig cfg;
  cfg.vocab = vocab;
  cfg.hidden = hidden;
  cfg.heads = 4;
  cfg.blocks = blocks;
  cfg.cond_dim = cond_dim;
  return cfg;
}

void BM_train_step_main_job(benchmark::State& state) {
  mdlm::DiTConfig cfg = small_dit(260, 128, 4, 64);
  cfg.dropout = 0.1f;
  mdlm::Host host;
  mdlm::bench::train_step<mdlm::Host, float, float>(state, host, cfg, 16, 128, 0.0, true, [] {});
}

void BM_train_step_micro(benchmark::State& state) {
  mdlm::Host host;
  mdlm::bench::train_step<mdlm::Host, float, float>(state, host, small_dit(64, 32, 2, 16), 2, 32, 0.0, true, [] {});
}

// The whole optimizer step (TrainStep's device path, AdamW, EMA; reads every kStepsPerRead steps).
void BM_whole_step_micro(benchmark::State& state) {
  mdlm::Host host;
  mdlm::bench::whole_step<mdlm::Host, float, float>(state, host, small_dit(64, 32, 2, 16), 2, 32, 0.0, false, [] {});
}

}  // namespace

// Arg: 1 = output head on masked rows only (the default), 0 = full head.
BENCHMARK(BM_train_step_tiny_preset)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_train_step_main_job)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_train_step_micro)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_whole_step_micro)->Unit(benchmark::kMillisecond)->UseRealTime();

#include "host_bench_main.hpp"
