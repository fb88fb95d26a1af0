#pragma once
// How the trainer runs one optimizer step's stream work: StepGraph<B>::run(body, prepare, undo).
// Here (the Host, and any backend without graphs) it runs body(). StepGraph<Cuda>
// (train/cuda_step_graph.cuh) captures the body (forward, backward, gradient norm, clipping,
// AdamW, EMA) as one CUDA graph and launches it; a capture that succeeds is also the proof that
// the step made no host round trip (backend/cuda/graph.cuh).
//
// The body must not read device results on the host (the trainer reads the loss and the NaN flag
// on logging steps, outside the body). `prepare` runs before a capture (host work that must not be
// captured: e.g. the tape's arena merging its blocks). `undo` restores the host state that body
// changed (the loader's position, the optimizer's step count) when a capture fails, so body can
// run again eagerly: the step is then taken once, never twice.

#include <cstdint>
#include <string>

namespace mdlm {

// The most micro-batches of a step captured as one graph: each stages its inputs in one pinned
// block, and the blocks of two steps in flight must not meet (backend/cuda/staging.cuh). With
// more, the trainer runs the steps eagerly.
inline constexpr std::int64_t kMaxGraphMicroBatches = 4;

struct StepGraphStats {
  std::int64_t graph_steps = 0;     // steps launched as a captured graph
  std::int64_t eager_steps = 0;     // steps run eagerly (the first, with graphs off, or after a failed capture)
  std::int64_t instantiations = 0;  // graphs instantiated (the rest updated an executable graph in place)
  std::string note;                 // why the last failed capture failed ("" if none did)
};

template <class B>
class StepGraph {
 public:
  StepGraph(B&, bool) {}
  template <class Body, class Prepare, class Undo>
  void run(Body&& body, Prepare&&, Undo&&) {
    body();
    ++stats_.eager_steps;
  }
  const StepGraphStats& stats() const { return stats_; }

 private:
  StepGraphStats stats_;
};

}  // namespace mdlm
