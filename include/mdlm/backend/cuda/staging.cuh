#pragma once
// Staging<Cuda>: host -> device copies that do not synchronize the stream (backend/staging.hpp
// has the interface and the Host's). to_device(ctx, vector) must synchronize because the vector
// may be a temporary; here the source is a pinned block owned by the ring, so cudaMemcpyAsync
// returns at once and the block stays alive until the copy has run. Before a block is rewritten,
// acquire() waits on the event recorded after its last copy: with kSlots blocks that is the copy
// of kSlots submits ago, long done in a training loop (the wait only throttles a host that ran
// that far ahead of the device). The blocks grow, all of them at once (after draining the
// stream; cudaHostAlloc and cudaFreeHost synchronize anyway), only when a step needs more bytes
// than ever before, i.e. at the first step; by at least half again each time.
// Under CUDA-graph capture (train/cuda_step_graph.cuh) the copy becomes a node of the graph that
// reads the block when the graph runs. No event is recorded then (an event recorded inside a
// capture cannot be waited on) and nothing is allocated (that would fail the capture); the step
// graph keeps the host at most two steps ahead of the device instead, and waits for a graph
// before an eager step; so one captured step may use at most kSlots / 2 blocks
// (kMaxGraphMicroBatches), and a step that needs more fails its capture and runs eagerly.

#include <cstddef>

#include <cuda_runtime.h>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/staging.hpp"
#include "mdlm/train/step_graph.hpp"

namespace mdlm {

template <>
class Staging<Cuda> {
 public:
  static constexpr int kSlots = 8;
  static_assert(kSlots / 2 >= kMaxGraphMicroBatches, "a captured step's blocks and the previous step's must not meet");

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
      // Blocks are allocated only outside a capture (an allocation fails it).
      MDLM_CHECK(s.host != nullptr && s.bytes >= bytes, "staging: a captured step needs a block of ", bytes,
                 " bytes that does not exist yet (the step runs eagerly and allocates it)");
    }
    // An event recorded outside any capture may be waited on, inside a capture too; a block last
    // read by a graph has none, and the step graph's throttle covers it.
    if (s.event != nullptr && !s.captured) MDLM_CUDA_CHECK(cudaEventSynchronize(s.event));
    if (capture == 0 && s.bytes < bytes) grow_all(ctx, bytes);
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
  // Grows every block to at least `bytes` (by half again at least) and gives each its event, so
  // that the blocks a captured step reaches exist; in practice once, at the first step. The
  // stream is drained first: a block may still be read by a copy, a graph's among them (which
  // recorded no event).
  void grow_all(Cuda& ctx, std::size_t bytes) {
    ctx.synchronize();
    DeviceGuard on(ctx.device());
    for (Slot& t : slots_) {
      if (t.bytes < bytes) {
        const std::size_t grown = bytes > t.bytes + t.bytes / 2 ? bytes : t.bytes + t.bytes / 2;
        if (t.host != nullptr) MDLM_CUDA_CHECK(cudaFreeHost(t.host));
        t.host = nullptr;
        t.bytes = 0;
        void* p = nullptr;
        MDLM_CUDA_CHECK(cudaHostAlloc(&p, grown, cudaHostAllocPortable));
        t.host = static_cast<std::byte*>(p);
        t.bytes = grown;
        ++allocations_;
      }
      if (t.event == nullptr) MDLM_CUDA_CHECK(cudaEventCreateWithFlags(&t.event, cudaEventDisableTiming));
      t.captured = false;
    }
  }
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
