#pragma once
// The Cuda backend context: one device, one stream, one cuBLASLt handle with its workspace
// and plan cache. No globals: every CUDA call of the library goes through a context (and
// its stream), so several contexts may coexist on different streams or devices.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>  // header-only NVTX 3: no library to link; free without a profiler

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/launch_config.hpp"
#include "mdlm/backend/cuda/lt_gemm.cuh"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

// Makes `device` current for a scope and restores the previous device after it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MDLM_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) MDLM_CUDA_CHECK(cudaSetDevice(device));
    changed_ = device != previous_;
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool changed_ = false;
};

template <>
struct MemoryOps<Cuda> {
  // On the current device (a Cuda context makes its device current when it is created);
  // allocate(ctx, bytes) allocates on the context's device whatever is current.
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    cudaError_t st = cudaMalloc(&p, bytes);
    if (st != cudaSuccess) {
      (void)cudaGetLastError();  // a failed cudaMalloc leaves the error set: the next launch check would report it
      MDLM_FAIL("device allocation of ", bytes, " bytes failed: ", cudaGetErrorString(st));
    }
    return p;
  }
  static void* allocate(const Cuda& ctx, std::size_t bytes);
  static void deallocate(void* p) noexcept { cudaFree(p); }
  // Free memory on the current device.
  static std::size_t available_bytes() {
    std::size_t free_bytes = 0, total_bytes = 0;
    MDLM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return free_bytes;
  }
  // Synchronous (for construction: callers then use the memory on any stream without further
  // ordering). Per-step zeroing is zero_bytes(ctx, ...), ordered on the context's stream.
  static void zero(void* p, std::size_t bytes) {
    MDLM_CUDA_CHECK(cudaMemset(p, 0, bytes));
    MDLM_CUDA_CHECK(cudaDeviceSynchronize());
  }
};

template <class T>
using DeviceBuffer = Buffer<T, Cuda>;

// The launch limits of a device, from its properties.
inline DeviceLimits device_limits(const cudaDeviceProp& p) {
  DeviceLimits l;
  l.max_grid_x = p.maxGridSize[0];
  l.max_grid_y = p.maxGridSize[1];
  l.max_grid_z = p.maxGridSize[2];
  l.max_block_x = p.maxThreadsDim[0];
  l.max_block_y = p.maxThreadsDim[1];
  l.max_block_z = p.maxThreadsDim[2];
  l.max_threads_per_block = p.maxThreadsPerBlock;
  l.max_smem_per_block = p.sharedMemPerBlock;  // without opt-in
  return l;
}

struct Cuda {
  // Creates its own non-blocking stream on `device`.
  explicit Cuda(int device = 0) : device_(device) {
    MDLM_CUDA_CHECK(cudaSetDevice(device_));
    MDLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    owns_stream_ = true;
    init();
  }
  // Uses a stream owned by the caller (not destroyed here).
  Cuda(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    MDLM_CUDA_CHECK(cudaSetDevice(device_));
    init();
  }
  Cuda(const Cuda&) = delete;
  Cuda& operator=(const Cuda&) = delete;
  ~Cuda() {
    lt_.reset();
    if (owns_stream_) cudaStreamDestroy(stream_);
  }

  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  LtGemm& lt() { return *lt_; }
  // The device's launch limits (launch() checks every kernel launch against them).
  const DeviceLimits& limits() const { return limits_; }
  // Waits for the stream. Every host round trip of the library (a download, a synchronous
  // upload) goes through here, so synchronizations() counts them: tests check that a training
  // step that logs nothing makes none.
  void synchronize() const {
    ++synchronizations_;
    MDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  std::int64_t synchronizations() const { return synchronizations_; }
  // NVTX ranges (the tape's profiling ranges: every layer and op by name in nsys and ncu).
  void range_push(const char* name) const { nvtxRangePushA(name); }
  void range_pop() const { nvtxRangePop(); }

  // Number of usable devices; 0 when there is no GPU or no driver (never throws).
  static int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return n;
  }

 private:
  void init() {
    cudaDeviceProp prop{};
    MDLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    limits_ = device_limits(prop);
    lt_ = std::make_unique<LtGemm>(stream_);
  }

  int device_ = 0;
  DeviceLimits limits_;
  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = false;
  mutable std::int64_t synchronizations_ = 0;
  std::unique_ptr<LtGemm> lt_;
};

inline void* MemoryOps<Cuda>::allocate(const Cuda& ctx, std::size_t bytes) {
  DeviceGuard on(ctx.device());
  return allocate(bytes);
}

// Sets `bytes` bytes at p to zero, ordered on the context's stream (no device synchronization).
inline void zero_bytes(Cuda& ctx, void* p, std::size_t bytes) {
  if (bytes > 0) MDLM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx.stream()));
}

// Host -> device copy into a new buffer (stream-ordered; the host data must stay alive
// until the stream reaches the copy, or call ctx.synchronize()).
template <class T>
Buffer<T, Cuda> to_device(Cuda& ctx, const T* host, Shape shape) {
  Buffer<T, Cuda> buf(ctx, shape);
  if (buf.bytes() > 0) {
    MDLM_CUDA_CHECK(cudaMemcpyAsync(buf.data(), host, buf.bytes(), cudaMemcpyHostToDevice, ctx.stream()));
  }
  return buf;
}
template <class T>
Buffer<T, Cuda> to_device(Cuda& ctx, const std::vector<T>& host) {
  auto buf = to_device(ctx, host.data(), Shape{static_cast<std::int64_t>(host.size())});
  ctx.synchronize();  // `host` may be a temporary
  return buf;
}

// Device -> host copy; synchronizes the context's stream.
template <class T>
std::vector<std::remove_const_t<T>> to_host(Cuda& ctx, View<T, Cuda> src) {
  std::vector<std::remove_const_t<T>> out(static_cast<std::size_t>(src.numel()));
  if (!out.empty()) {
    MDLM_CUDA_CHECK(cudaMemcpyAsync(out.data(), src.data, src.bytes(), cudaMemcpyDeviceToHost, ctx.stream()));
  }
  ctx.synchronize();
  return out;
}

}  // namespace mdlm

namespace mdlm {

// Sets a (strided) device matrix to zero on the context's stream.
template <class T>
void fill_zero(Cuda& ctx, MatrixView<T, Cuda> m) {
  if (m.rows == 0 || m.cols == 0) return;
  MDLM_CUDA_CHECK(cudaMemset2DAsync(m.data, static_cast<std::size_t>(m.ld) * sizeof(T), 0,
                                    static_cast<std::size_t>(m.cols) * sizeof(T), static_cast<std::size_t>(m.rows),
                                    ctx.stream()));
}

// Copies a device matrix into another of the same shape on the context's stream.
template <class T>
void copy(Cuda& ctx, MatrixView<const T, Cuda> src, MatrixView<T, Cuda> dst) {
  MDLM_CHECK(src.rows == dst.rows && src.cols == dst.cols, "copy: shapes differ: ", src.rows, "x", src.cols, " vs ",
             dst.rows, "x", dst.cols);
  if (src.rows == 0 || src.cols == 0) return;
  MDLM_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, static_cast<std::size_t>(dst.ld) * sizeof(T), src.data,
                                    static_cast<std::size_t>(src.ld) * sizeof(T),
                                    static_cast<std::size_t>(src.cols) * sizeof(T), static_cast<std::size_t>(src.rows),
                                    cudaMemcpyDeviceToDevice, ctx.stream()));
}

}  // namespace mdlm

namespace mdlm {

template <class T>
Buffer<T, Cuda> upload(Cuda& ctx, const std::vector<T>& v) {
  return to_device(ctx, v);
}
template <class T>
void upload_into(Cuda& ctx, const T* src, std::int64_t n, T* dst) {
  if (n == 0) return;
  MDLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(n) * sizeof(T), cudaMemcpyHostToDevice, ctx.stream()));
  ctx.synchronize();  // src may be a temporary
}
template <class T>
std::vector<std::remove_const_t<T>> download(Cuda& ctx, MatrixView<T, Cuda> m) {
  std::vector<std::remove_const_t<T>> out(static_cast<std::size_t>(m.rows * m.cols));
  if (out.empty()) return out;
  if (m.rows == 1 || m.ld == m.cols) {  // contiguous: one plain copy (a 2-D copy's pitch is limited to 2 GiB)
    MDLM_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.data, out.size() * sizeof(T), cudaMemcpyDeviceToHost, ctx.stream()));
  } else {
    MDLM_CUDA_CHECK(cudaMemcpy2DAsync(out.data(), static_cast<std::size_t>(m.cols) * sizeof(T), m.data,
                                      static_cast<std::size_t>(m.ld) * sizeof(T),
                                      static_cast<std::size_t>(m.cols) * sizeof(T), static_cast<std::size_t>(m.rows),
                                      cudaMemcpyDeviceToHost, ctx.stream()));
  }
  ctx.synchronize();
  return out;
}

}  // namespace mdlm
