#pragma once
// CUDA graphs on a context's stream: capture a body of stream work, then instantiate it, or
// update an executable graph in place when a later capture has the same topology.
//
//   GraphExec exec;
//   GraphCapture c = capture_graph(ctx, [&] { ...launches on ctx.stream()... });
//   if (c.ok()) { std::string why = exec.set(c.graph); if (why.empty()) exec.launch(ctx); }
//
// A capture runs in cudaStreamCaptureModeThreadLocal by default: a call that would synchronize
// this thread with the device (cudaStreamSynchronize, cudaMalloc, cudaFree, a pageable
// cudaMemcpy) fails the capture instead of running. So a capture that succeeds is proof that its
// body made no host round trip. Any failure (a CUDA error, an mdlm::Error thrown by the body) ends the capture,
// clears the error and is returned as text: the caller decides to go on eagerly.
// The samplers' loop (sampling/cuda_sampler.cuh) and the training step (train/cuda_step_graph.cuh)
// both use these.

#include <exception>
#include <string>
#include <utility>

#include <cuda_runtime.h>

#include "mdlm/backend/cuda/context.cuh"

namespace mdlm {

// A captured graph (owned: destroyed with this), or why capture failed.
struct GraphCapture {
  cudaGraph_t graph = nullptr;
  std::string error;
  GraphCapture() = default;
  GraphCapture(const GraphCapture&) = delete;
  GraphCapture& operator=(const GraphCapture&) = delete;
  GraphCapture(GraphCapture&& o) noexcept : graph(std::exchange(o.graph, nullptr)), error(std::move(o.error)) {}
  ~GraphCapture() {
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
  bool ok() const { return graph != nullptr && error.empty(); }
};

namespace graph_detail {
// Ends a capture left open on `stream` (after a failure inside the body) and clears the error.
inline void abandon_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = nullptr;
    (void)cudaStreamEndCapture(stream, &g);
    if (g != nullptr) cudaGraphDestroy(g);
  }
  (void)cudaGetLastError();
}
}  // namespace graph_detail

// Runs body() with ctx's stream under capture and returns the graph, or the reason it failed.
template <class Body>
GraphCapture capture_graph(Cuda& ctx, Body&& body, cudaStreamCaptureMode mode = cudaStreamCaptureModeThreadLocal) {
  GraphCapture out;
  cudaError_t st = cudaStreamBeginCapture(ctx.stream(), mode);
  if (st != cudaSuccess) {
    (void)cudaGetLastError();
    out.error = std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(st);
    return out;
  }
  try {
    body();
  } catch (const std::exception& e) {
    graph_detail::abandon_capture(ctx.stream());
    out.error = e.what();
    return out;
  }
  cudaGraph_t g = nullptr;
  st = cudaStreamEndCapture(ctx.stream(), &g);
  if (st != cudaSuccess) {
    if (g != nullptr) cudaGraphDestroy(g);
    (void)cudaGetLastError();
    out.error = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(st);
    return out;
  }
  out.graph = g;
  return out;
}

// An executable graph: set(graph) updates it in place (cudaGraphExecUpdate: same topology, new
// kernel arguments, shapes or copy addresses) or, when that is refused, instantiates it anew.
class GraphExec {
 public:
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec() { reset(); }

  // "" on success, else why (the executable graph is then empty).
  std::string set(cudaGraph_t graph) {
    if (exec_ != nullptr) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(exec_, graph, &info) == cudaSuccess) {
        ++updates_;
        return {};
      }
      (void)cudaGetLastError();  // a refused update leaves the error set
      reset();
    }
    const cudaError_t st = cudaGraphInstantiate(&exec_, graph, 0);
    if (st != cudaSuccess) {
      exec_ = nullptr;
      (void)cudaGetLastError();
      return std::string("cudaGraphInstantiate: ") + cudaGetErrorString(st);
    }
    ++instantiations_;
    return {};
  }
  bool ready() const { return exec_ != nullptr; }
  void launch(Cuda& ctx) {
    MDLM_CHECK(exec_ != nullptr, "GraphExec::launch: no graph was set");
    MDLM_CUDA_CHECK(cudaGraphLaunch(exec_, ctx.stream()));
  }
  void reset() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }
  // How often set() instantiated a graph, and how often it updated the existing one.
  std::int64_t instantiations() const { return instantiations_; }
  std::int64_t updates() const { return updates_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
  std::int64_t instantiations_ = 0, updates_ = 0;
};

}  // namespace mdlm
