// Where the Host training step's time goes: milliseconds per op and DiT layer, forward and
// backward (StepProfile over the tape's profiling ranges, train/step_profile.hpp).
//   build/bench/mdlm_profile_step_host [main_job|tiny|micro] [STEPS]
// main_job: the main job's model (scripts/main-job.sh: hidden 128, 4 blocks, 4 heads, cond 64,
// bytes, dropout 0.1) at B = 16, L = 128; tiny: the tiny preset, V = 50258, B = 2, T = 128;
// micro: a 2-block 32-wide model (the CI smoke run).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "mdlm/mdlm.hpp"
#include "train_step.hpp"

int main(int argc, char** argv) {
  mdlm::host_retain_freed_memory();
  const std::string shape = argc > 1 ? argv[1] : "main_job";
  const long steps = argc > 2 ? std::atol(argv[2]) : 5;
  mdlm::DiTConfig cfg;
  std::int64_t batch = 16, seq = 128;
  if (shape == "main_job") {
    cfg.vocab = 260, cfg.hidden = 128, cfg.heads = 4, cfg.blocks = 4, cfg.cond_dim = 64, cfg.dropout = 0.1f;
  } else if (shape == "tiny") {
    cfg = mdlm::DiTConfig::preset("tiny", 50258);
    batch = 2;
  } else if (shape == "micro") {
    cfg.vocab = 64, cfg.hidden = 32, cfg.heads = 4, cfg.blocks = 2, cfg.cond_dim = 16;
    batch = 2, seq = 32;
  } else {
    std::fprintf(stderr, "usage: %s [main_job|tiny|micro] [STEPS]\n", argv[0]);
    return 2;
  }
  if (steps < 1) {
    std::fprintf(stderr, "STEPS must be positive, got %ld\n", steps);
    return 2;
  }
  mdlm::Host host;
  std::printf("Host training step, %s: B = %lld, T = %lld, %ld profiled steps\n", shape.c_str(),
              static_cast<long long>(batch), static_cast<long long>(seq), steps);
  std::fputs(mdlm::bench::profile_steps<mdlm::Host, float, float>(host, cfg, batch, seq, true, steps, mdlm::HostClock{}, 0.0,
                                                                   [] {})
                 .c_str(),
             stdout);
  return 0;
}
