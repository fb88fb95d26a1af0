#pragma once
// The batched samplers (sampling/batched.hpp) on CUDA, and the CUDA-graph replay of their loop:
// step 0 runs eagerly (it sizes the activation arena and fills the GEMM plan cache), step 1 is
// captured (every kernel reads its step's numbers from device memory, so the arguments do not
// change) and the graph is launched for steps 1..N-1. If capture fails, the loop goes on eagerly
// and SampleResult::note says why.

#include <exception>
#include <string>

#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/ops/cuda/sample.cuh"
#include "mdlm/sampling/batched.hpp"

namespace mdlm {

template <>
struct StepReplay<Cuda> {
  Cuda& ctx;
  bool enabled;
  bool failed = false;
  cudaGraphExec_t exec = nullptr;

  StepReplay(Cuda& c, bool on) : ctx(c), enabled(on) {}
  StepReplay(const StepReplay&) = delete;
  StepReplay& operator=(const StepReplay&) = delete;
  ~StepReplay() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }

  template <class Body, class Prepare>
  void step(std::int64_t step, Body&& body, Prepare&& prepare, SampleResult& res) {
    if (!enabled || step == 0 || failed) {
      body();
      return;
    }
    if (exec == nullptr) {
      prepare();  // e.g. consolidate the arena grown in step 0: no allocation while capturing
      // Any failure to capture or instantiate (a CUDA error, an exception from the body, a stream
      // that cannot be captured) ends the capture, and the loop goes on eagerly, saying why.
      auto fall_back = [&](const std::string& why) {
        cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(ctx.stream(), &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
          cudaGraph_t g = nullptr;
          (void)cudaStreamEndCapture(ctx.stream(), &g);
          if (g != nullptr) cudaGraphDestroy(g);
        }
        (void)cudaGetLastError();
        res.note = "CUDA graph capture failed, ran eagerly: " + why;
        failed = true;
        body();
      };
      cudaError_t st = cudaStreamBeginCapture(ctx.stream(), cudaStreamCaptureModeRelaxed);
      if (st != cudaSuccess) return fall_back(std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(st));
      try {
        body();
      } catch (const std::exception& e) {
        return fall_back(e.what());
      }
      cudaGraph_t g = nullptr;
      st = cudaStreamEndCapture(ctx.stream(), &g);
      if (st != cudaSuccess) {
        if (g != nullptr) cudaGraphDestroy(g);
        return fall_back(std::string("cudaStreamEndCapture: ") + cudaGetErrorString(st));
      }
      st = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      if (st != cudaSuccess) {
        exec = nullptr;
        return fall_back(std::string("cudaGraphInstantiate: ") + cudaGetErrorString(st));
      }
      res.cuda_graph = true;
    }
    MDLM_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream()));
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
