// Where the CUDA training step's time goes: milliseconds per op and DiT layer, forward and
// backward, timed by CUDA events on the stream (StepProfile with CudaEventClock over the tape's
// profiling ranges, which are also NVTX ranges for nsys/ncu), against issue 17's step budget.
//   build/bench/mdlm_profile_step_cuda [owt|lm1b] [STEPS]
// owt: the small preset at B = 32, T = 1024, V = 50258, goal 580K tokens/s (56.5 ms a step);
// lm1b: B = 256, T = 128, V = 30522, goal 750K tokens/s (43.7 ms). bf16 mixed precision.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "mdlm/cuda.cuh"
#include "train_step.hpp"

int main(int argc, char** argv) {
  const std::string shape = argc > 1 ? argv[1] : "owt";
  const long steps = argc > 2 ? std::atol(argv[2]) : 5;
  if ((shape != "owt" && shape != "lm1b") || steps < 1) {
    std::fprintf(stderr, "usage: %s [owt|lm1b] [STEPS > 0]\n", argv[0]);
    return 2;
  }
  if (mdlm::Cuda::device_count() == 0) {
    std::printf("no CUDA device: nothing to profile\n");
    return 0;
  }
  const bool owt = shape == "owt";
  const std::int64_t batch = owt ? 32 : 256, seq = owt ? 1024 : 128;
  const mdlm::DiTConfig cfg = mdlm::DiTConfig::preset("small", owt ? 50258 : 30522);
  mdlm::Cuda ctx;
  std::printf("CUDA training step (bf16 mixed), small preset, %s: B = %lld, T = %lld, %ld profiled steps\n", shape.c_str(),
              static_cast<long long>(batch), static_cast<long long>(seq), steps);
  std::fputs(mdlm::bench::profile_steps<mdlm::Cuda, mdlm::bf16, float>(ctx, cfg, batch, seq, true, steps,
                                                                        mdlm::CudaEventClock{ctx}, owt ? 580e3 : 750e3,
                                                                        [&] { ctx.synchronize(); })
                 .c_str(),
             stdout);
  return 0;
}
