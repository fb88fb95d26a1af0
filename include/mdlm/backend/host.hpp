#pragma once
// The Host backend: CPU memory, OpenMP loops, cblas GEMM (in ops/gemm.hpp). Runs everywhere;
// it is the reference the CUDA backend is tested against.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <algorithm>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

struct Host {
  // Threads for OpenMP loops in this context; 0 means OpenMP's default.
  int threads = 0;

  int thread_count() const { return threads > 0 ? threads : omp_get_max_threads(); }

  // Runs body(i) for i in [0, n) on the context's threads, in static chunks (deterministic
  // assignment: results never depend on scheduling as long as body(i) writes only its own
  // outputs).
  template <class F>
  void parallel_for(std::int64_t n, F&& body) const {
#pragma omp parallel for schedule(static) num_threads(thread_count())
    for (std::int64_t i = 0; i < n; ++i) body(i);
  }
};

template <>
struct MemoryOps<Host> {
  static constexpr std::size_t kAlignment = 256;
  static void* allocate(std::size_t bytes) {
    std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (p == nullptr) MDLM_FAIL("host allocation of ", bytes, " bytes failed");
    return p;
  }
  static void deallocate(void* p) noexcept { std::free(p); }
  static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
};

template <class T>
using HostBuffer = Buffer<T, Host>;

}  // namespace mdlm

namespace mdlm {

// Sets a (strided) host matrix to zero.
template <class T>
void fill_zero(const Host& ctx, MatrixView<T, Host> m) {
  ctx.parallel_for(m.rows, [&](std::int64_t r) {
    for (std::int64_t c = 0; c < m.cols; ++c) m.data[r * m.ld + c] = T(0);
  });
}

// Copies a host matrix into another of the same shape.
template <class T>
void copy(const Host& ctx, MatrixView<const T, Host> src, MatrixView<T, Host> dst) {
  MDLM_CHECK(src.rows == dst.rows && src.cols == dst.cols, "copy: shapes differ: ", src.rows, "x", src.cols, " vs ",
             dst.rows, "x", dst.cols);
  ctx.parallel_for(src.rows, [&](std::int64_t r) {
    for (std::int64_t c = 0; c < src.cols; ++c) dst.data[r * dst.ld + c] = src.data[r * src.ld + c];
  });
}

}  // namespace mdlm

namespace mdlm {

// Transfers between host vectors and backend memory, with the same names on every backend
// (the Cuda versions are in backend/cuda/context.cuh), so generic code can move data.
template <class T>
Buffer<T, Host> upload(const Host&, const std::vector<T>& v) {
  Buffer<T, Host> b(static_cast<std::int64_t>(v.size()));
  std::copy(v.begin(), v.end(), b.data());
  return b;
}
template <class T>
void upload_into(const Host&, const T* src, std::int64_t n, T* dst) {
  std::copy(src, src + n, dst);
}
template <class T>
std::vector<std::remove_const_t<T>> download(const Host&, MatrixView<T, Host> m) {
  std::vector<std::remove_const_t<T>> out(static_cast<std::size_t>(m.rows * m.cols));
  for (std::int64_t r = 0; r < m.rows; ++r) std::copy(m.data + r * m.ld, m.data + r * m.ld + m.cols, out.data() + r * m.cols);
  return out;
}

}  // namespace mdlm
