#pragma once
// The CUDA clock of StepProfile (train/step_profile.hpp): a mark is a CUDA event recorded on the
// context's stream, so ranges are timed by the GPU's own clock, with no synchronization until
// the step ends. Events are reused from step to step.

#include <cstddef>
#include <vector>

#include <cuda_runtime.h>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"

namespace mdlm {

class CudaEventClock {
 public:
  using Mark = cudaEvent_t;

  explicit CudaEventClock(Cuda& ctx) : stream_(ctx.stream()) {}
  CudaEventClock(CudaEventClock&& o) noexcept : stream_(o.stream_), events_(std::move(o.events_)), used_(o.used_) {
    o.events_.clear();
    o.used_ = 0;
  }
  CudaEventClock(const CudaEventClock&) = delete;
  CudaEventClock& operator=(const CudaEventClock&) = delete;
  CudaEventClock& operator=(CudaEventClock&&) = delete;
  ~CudaEventClock() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

  Mark mark() {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      MDLM_CUDA_CHECK(cudaEventCreate(&e));  // with timing
      events_.push_back(e);
    }
    cudaEvent_t e = events_[used_++];
    MDLM_CUDA_CHECK(cudaEventRecord(e, stream_));
    return e;
  }
  double ms(Mark from, Mark to) const {
    float t = 0;
    MDLM_CUDA_CHECK(cudaEventElapsedTime(&t, from, to));
    return static_cast<double>(t);
  }
  void wait() const {
    if (used_ > 0) MDLM_CUDA_CHECK(cudaEventSynchronize(events_[used_ - 1]));
  }
  void recycle() { used_ = 0; }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  std::size_t used_ = 0;
};

}  // namespace mdlm
