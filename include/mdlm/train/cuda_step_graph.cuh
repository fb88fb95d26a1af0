#pragma once
// The training step as a CUDA graph (train/step_graph.hpp says what the trainer gives it).
// The first step runs eagerly: it sizes the activation arena, the scratch and the staging
// buffers, and builds the GEMM plans. Every later step is captured anew and the executable graph
// is updated in place (cudaGraphExecUpdate), so what changes from step to step (the Philox step,
// the learning rate, the head's row count) is simply captured again; a step whose graph cannot
// be updated (another topology) is instantiated. Capturing costs the host about what launching
// eagerly does, but the GPU runs the step without launch gaps, and the strict capture mode proves
// that nothing in the step synchronizes.
// The host stays at most two steps ahead of the device: before capturing step k it waits for
// step k - 2 to finish (an event recorded after each step's launch, outside any capture). The
// pinned staging blocks the captured copies read (backend/cuda/staging.cuh) rely on it.
// A failed capture (e.g. the arena had to grow for a larger head: an allocation inside a
// capture) is undone and the step runs eagerly; after kMaxFailures failures in a row graphs are
// off for the run, and stats().note says why.

#include <cstdint>
#include <string>

#include "mdlm/backend/cuda/graph.cuh"
#include "mdlm/train/step_graph.hpp"

namespace mdlm {

template <>
class StepGraph<Cuda> {
 public:
  static constexpr int kMaxFailures = 3;
  StepGraph(Cuda& ctx, bool enabled) : ctx_(ctx), enabled_(enabled) {
    for (cudaEvent_t& e : done_) MDLM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() {
    for (cudaEvent_t e : done_) cudaEventDestroy(e);
  }

  template <class Body, class Prepare, class Undo>
  void run(Body&& body, Prepare&& prepare, Undo&& undo) {
    const std::int64_t k = stats_.eager_steps + stats_.graph_steps;
    run_step(k, body, prepare, undo);
    MDLM_CUDA_CHECK(cudaEventRecord(done_[k % 2], ctx_.stream()));
  }
  const StepGraphStats& stats() const { return stats_; }

 private:
  // An eager step after a graph waits for that graph first: the graph's copies read pinned
  // staging blocks without events (they cannot be recorded inside a capture), and the eager step
  // may write them.
  template <class Body>
  void run_eagerly(std::int64_t k, Body& body) {
    if (last_was_graph_) MDLM_CUDA_CHECK(cudaEventSynchronize(done_[(k + 1) % 2]));  // step k - 1
    last_was_graph_ = false;
    body();
    ++stats_.eager_steps;
  }

  template <class Body, class Prepare, class Undo>
  void run_step(std::int64_t k, Body& body, Prepare& prepare, Undo& undo) {
    if (!enabled_ || k == 0 || failures_ >= kMaxFailures) return run_eagerly(k, body);
    if (k >= 2) MDLM_CUDA_CHECK(cudaEventSynchronize(done_[k % 2]));  // step k - 2 has finished
    prepare();
    GraphCapture c = capture_graph(ctx_, body);
    const std::int64_t before = exec_.instantiations();
    const std::string why = c.ok() ? exec_.set(c.graph) : c.error;
    if (!why.empty()) {
      ++failures_;
      stats_.note = "CUDA graph capture failed (" + std::to_string(failures_) + " in a row" +
                    (failures_ >= kMaxFailures ? "; graphs are off for this run" : "") + "), the step ran eagerly: " + why;
      undo();
      return run_eagerly(k, body);
    }
    failures_ = 0;
    stats_.instantiations += exec_.instantiations() - before;
    exec_.launch(ctx_);
    last_was_graph_ = true;
    ++stats_.graph_steps;
  }

  Cuda& ctx_;
  bool enabled_;
  int failures_ = 0;
  bool last_was_graph_ = false;
  GraphExec exec_;
  StepGraphStats stats_;
  cudaEvent_t done_[2] = {nullptr, nullptr};  // recorded after steps k - 2 and k - 1
};

}  // namespace mdlm
