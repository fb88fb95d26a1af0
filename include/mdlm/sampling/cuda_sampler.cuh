#pragma once
// The batched samplers (sampling/batched.hpp) on CUDA, and the CUDA-graph replay of their loop:
// step 0 runs eagerly (it sizes the activation arena and fills the GEMM plan cache), step 1 is
// captured (every kernel reads its step's numbers from device memory, so the arguments do not
// change) and the graph is launched for steps 1..N-1. If capture fails, the loop goes on eagerly
// and SampleResult::note says why.

#include <exception>
#include <string>

#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/graph.cuh"
#include "mdlm/ops/cuda/sample.cuh"
#include "mdlm/sampling/batched.hpp"

namespace mdlm {

template <>
struct StepReplay<Cuda> {
  Cuda& ctx;
  bool enabled;
  bool failed = false;
  GraphExec exec;

  StepReplay(Cuda& c, bool on) : ctx(c), enabled(on) {}

  template <class Body, class Prepare>
  void step(std::int64_t step, Body&& body, Prepare&& prepare, SampleResult& res) {
    if (!enabled || step == 0 || failed) {
      body();
      return;
    }
    if (!exec.ready()) {
      prepare();  // e.g. consolidate the arena grown in step 0: no allocation while capturing
      // Any failure to capture or instantiate ends the capture, and the loop goes on eagerly,
      // saying why. (Relaxed capture: the loop's kernels were written against it.)
      GraphCapture c = capture_graph(ctx, body, cudaStreamCaptureModeRelaxed);
      std::string why = c.ok() ? exec.set(c.graph) : c.error;
      if (!why.empty()) {
        res.note = "CUDA graph capture failed, ran eagerly: " + why;
        failed = true;
        body();
        return;
      }
      res.cuda_graph = true;
    }
    exec.launch(ctx);
  }
};

// The batched samplers with z, the logits and the step table on the GPU.
template <Sampler S, class Schedule, class T, class G>
SampleResult sample_on_device(Cuda& ctx, const DiT& model, ParamStore<Cuda, T, G>& store, std::int64_t mask_id,
                              const Schedule& sched, const S& sampler, const SamplerSettings& cfg, std::vector<std::int32_t> init,
                              std::int64_t n, std::int64_t len) {
  return sample_batched(ctx, model, store, mask_id, sched, sampler, cfg, std::move(init), n, len);
}

}  // namespace mdlm
