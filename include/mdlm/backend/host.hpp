#pragma once
// The Host backend: CPU memory, OpenMP loops, cblas GEMM (in ops/gemm.hpp). Runs everywhere;
// it is the reference the CUDA backend is tested against.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <new>
#include <algorithm>
#include <type_traits>
#include <vector>

#include <omp.h>

#if defined(__GLIBC__)
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define MDLM_HOST_HAS_MXCSR 1
#else
#define MDLM_HOST_HAS_MXCSR 0
#endif

#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

// Denormal handling of the Host's compute threads. With flush_denormals (the default) every
// thread that runs Host work computes with FTZ (flush-to-zero: denormal results become 0) and
// DAZ (denormals-are-zero: denormal inputs read as 0), MXCSR bits 15 and 6 on x86; otherwise
// with IEEE gradual underflow. Denormals appear in training (tiny gradients, exp of very negative
// scores, Adam moments decaying to nothing) and cost ~100 cycles per operation on x86. The mode
// is a property of the thread and stays set after the call returns: Host::parallel_for sets it
// on the calling thread and on every OpenMP worker of its team (workers created later included:
// each sets it at the start of its chunk), and Host::enter() does the same for a team of the
// size an OpenMP-built BLAS uses (ops/gemm.hpp calls it before every cblas call). Elsewhere than
// x86 this is a no-op.
namespace host_fp {

inline constexpr unsigned kFtz = 1u << 15, kDaz = 1u << 6;

// Sets (flush = true) or clears FTZ and DAZ on the calling thread; one ldmxcsr when it changes.
inline void set_flush_denormals(bool flush) {
#if MDLM_HOST_HAS_MXCSR
  const unsigned csr = _mm_getcsr();
  const unsigned want = flush ? (csr | kFtz | kDaz) : (csr & ~(kFtz | kDaz));
  if (want != csr) _mm_setcsr(want);
#else
  (void)flush;
#endif
}

// The calling thread's FTZ|DAZ bits (0 where there is no MXCSR).
inline unsigned flush_bits() {
#if MDLM_HOST_HAS_MXCSR
  return _mm_getcsr() & (kFtz | kDaz);
#else
  return 0;
#endif
}

}  // namespace host_fp

struct Host {
  // Threads for OpenMP loops in this context; 0 means OpenMP's default.
  int threads = 0;
  // FTZ + DAZ on the threads that run this context's work (see above); false: IEEE denormals.
  bool flush_denormals = true;

  int thread_count() const { return threads > 0 ? threads : omp_get_max_threads(); }

  // Puts the calling thread in this context's floating-point mode.
  void apply_fp_mode() const { host_fp::set_flush_denormals(flush_denormals); }

  // Puts the calling thread and the OpenMP threads a following BLAS call (or any OpenMP region
  // of up to max(thread_count(), omp_get_max_threads()) threads) runs on in this context's
  // mode: an empty parallel region (about a microsecond) when called outside any region (inside
  // one, the BLAS runs on the calling thread, already in the mode).
  void enter() const {
    apply_fp_mode();
    const int n = std::max(thread_count(), omp_get_max_threads());
    if (n > 1 && omp_get_level() == 0) {
      const bool flush = flush_denormals;
#pragma omp parallel num_threads(n)
      host_fp::set_flush_denormals(flush);
    }
  }

  // Runs body(i) for i in [0, n) on the context's threads, in static chunks (deterministic
  // assignment: results never depend on scheduling as long as body(i) writes only its own
  // outputs). Every thread of the team (the calling one included) first takes the context's
  // floating-point mode.
  template <class F>
  void parallel_for(std::int64_t n, F&& body) const {
    const bool flush = flush_denormals;
#pragma omp parallel num_threads(thread_count())
    {
      host_fp::set_flush_denormals(flush);
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) body(i);
    }
  }
};

// Keeps the memory the process frees for reuse instead of handing it back to the kernel:
// glibc's heap is no longer trimmed below 1 GiB of free space at its top, and blocks under
// 256 MiB come from the heap instead of their own mmap. oneDNN's sgemm allocates and frees its
// packing buffers on every call; with glibc's defaults the freed top of the heap goes back to
// the kernel and the next call faults it in again page by page (about 15% of the main job's
// training step, measured with perf and interleaved runs: README, "Host backend"). This is a
// process-wide setting, so the library never makes it by itself: the `mdlm` program and the
// Host benchmarks call it first thing, and so may any program that trains or samples on the
// Host. Returns false where it does not apply (not glibc).
inline bool host_retain_freed_memory() {
#if defined(__GLIBC__)
  return mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 && mallopt(M_MMAP_THRESHOLD, 256 << 20) == 1;
#else
  return false;
#endif
}

template <>
struct MemoryOps<Host> {
  static constexpr std::size_t kAlignment = 256;
  static void* allocate(std::size_t bytes) {
    std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (p == nullptr) MDLM_FAIL("host allocation of ", bytes, " bytes failed");
    return p;
  }
  static void* allocate(const Host&, std::size_t bytes) { return allocate(bytes); }
  static void deallocate(void* p) noexcept { std::free(p); }
  // Memory a new allocation can get: the least of the kernel's MemAvailable, the cgroup (v2)
  // limit less its usage, and RLIMIT_AS; physical memory where none of these can be read.
  static std::size_t available_bytes() {
    auto read_number = [](const char* path, const char* key) -> std::uint64_t {  // 0: unreadable
      std::FILE* f = std::fopen(path, "r");
      if (f == nullptr) return 0;
      char line[256];
      std::uint64_t v = 0;
      while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::strncmp(line, key, std::strlen(key)) == 0) {
          v = std::strtoull(line + std::strlen(key), nullptr, 10);
          break;
        }
      }
      std::fclose(f);
      return v;
    };
    std::uint64_t avail = read_number("/proc/meminfo", "MemAvailable:") * 1024;
    if (avail == 0) avail = static_cast<std::uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    const std::uint64_t limit = read_number("/sys/fs/cgroup/memory.max", ""), used = read_number("/sys/fs/cgroup/memory.current", "");
    if (limit > 0 && limit >= used) avail = std::min(avail, limit - used);
    rlimit as{};
    if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) avail = std::min<std::uint64_t>(avail, as.rlim_cur);
    return static_cast<std::size_t>(avail);
  }
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

// Sets `bytes` bytes at p to zero (the Host twin of zero_bytes(Cuda&, ...)).
inline void zero_bytes(const Host&, void* p, std::size_t bytes) { std::memset(p, 0, bytes); }

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
