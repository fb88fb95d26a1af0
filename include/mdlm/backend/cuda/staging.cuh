#pragma once
// Staging<Cuda>: host -> device copies that do not synchronize the stream (backend/staging.hpp
// has the interface and the Host's). to_device(ctx, vector) must synchronize because the vector
// may be a temporary; here the source is a pinned block owned by the ring, so cudaMemcpyAsync
// returns at once and the block stays alive until the copy has run. Before a block is rewritten,
// acquire() waits on the event recorded after its last copy: with kSlots blocks that is the copy
// of kSlots submits ago, long done in a training loop (the wait only throttles a host that ran
// that far ahead of the device). A block grows (cudaFreeHost + cudaHostAlloc, which synchronize)
// only when a step needs more bytes than ever before, i.e. outside the steady state; it grows
// by at least half again so a slowly growing size does not reallocate every step.
// Under CUDA-graph capture (train/cuda_step_graph.cuh) the copy becomes a node of the graph that
// reads the block when the graph runs. Events are then neither waited on nor recorded (an event
// recorded inside a capture cannot be waited on), and the step graph keeps the host at most two
// steps ahead of the device instead; so one captured step may use at most kSlots / 2 blocks, and
// a step that needs more fails its capture (it then runs eagerly, with the events).

#include <cstddef>

#include <cuda_runtime.h>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/staging.hpp"

namespace mdlm {

template <>
class Staging<Cuda> {
 public:
  static constexpr int kSlots = 8;

  Staging() = default;
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    for (Slot& s : slots_) {
      if (s.event != nullptr) {
        if (s.captured) cudaDeviceSynchronize();  // a graph's copy may still read the block
        else cudaEventSynchronize(s.event);                // a copy may still read the block
        cudaEventDestroy(s.event);
      }
      if (s.host != nullptr) cudaFreeHost(s.host);
    }
  }

  std::byte* acquire(Cuda& ctx, std::size_t bytes) {
    Slot& s = slots_[next_];
    const unsigned long long capture = capture_id(ctx);
    if (capture != 0) {
      captured_uses_ = capture == capture_ ? captured_uses_ + 1 : 1;
      capture_ = capture;
      MDLM_CHECK(captured_uses_ <= kSlots / 2, "staging: more than ", kSlots / 2,
                 " host copies in one captured step (the step runs eagerly)");
    } else if (s.event != nullptr && !s.captured) {
      MDLM_CUDA_CHECK(cudaEventSynchronize(s.event));
    }
    if (s.bytes < bytes) {
      DeviceGuard on(ctx.device());
      const std::size_t grown = bytes > s.bytes + s.bytes / 2 ? bytes : s.bytes + s.bytes / 2;
      if (s.host != nullptr) MDLM_CUDA_CHECK(cudaFreeHost(s.host));
      s.host = nullptr;
      s.bytes = 0;
      void* p = nullptr;
      MDLM_CUDA_CHECK(cudaHostAlloc(&p, grown, cudaHostAllocPortable));
      s.host = static_cast<std::byte*>(p);
      s.bytes = grown;
      ++allocations_;
    }
    if (s.event == nullptr) {
      DeviceGuard on(ctx.device());
      MDLM_CUDA_CHECK(cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming));
    }
    return s.host;
  }

  void submit(Cuda& ctx, void* dst, std::size_t bytes) {
    Slot& s = slots_[next_];
    MDLM_CHECK(bytes <= s.bytes, "staging: submit of ", bytes, " bytes from a block of ", s.bytes);
    if (bytes > 0) MDLM_CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, ctx.stream()));
    s.captured = capture_id(ctx) != 0;
    if (!s.captured) MDLM_CUDA_CHECK(cudaEventRecord(s.event, ctx.stream()));
    next_ = (next_ + 1) % kSlots;
  }

  // Pinned blocks allocated so far (a test checks the steady state adds none).
  int allocations() const { return allocations_; }

 private:
  struct Slot {
    std::byte* host = nullptr;
    std::size_t bytes = 0;
    cudaEvent_t event = nullptr;
    bool captured = false;  // last copied by a captured graph: its event was not recorded
  };
  // The id of the capture under way on the context's stream (0: none).
  static unsigned long long capture_id(Cuda& ctx) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    MDLM_CUDA_CHECK(cudaStreamGetCaptureInfo(ctx.stream(), &status, &id));
    return status == cudaStreamCaptureStatusActive ? id : 0;
  }
  Slot slots_[kSlots];
  int next_ = 0;
  unsigned long long capture_ = 0;  // the capture the last captured acquire belonged to
  int captured_uses_ = 0;           // blocks it used
  int allocations_ = 0;
};

}  // namespace mdlm
