#pragma once
// What a kernel launch will be, apart from the launch itself: grid, block, and shared memory
// (static, from the kernel's shared-storage types, plus dynamic). Every CUDA launcher in the
// library computes its LaunchConfig through a host function, and launch() (launch.cuh) checks
// it against the device's limits before the kernel is issued, so a shape the kernels cannot
// take is an mdlm::Error naming the kernel and the value, never a launch failure. Plain C++:
// the configurations are checked on the CPU, in CI, for every shape the library uses
// (tests/cuda_host/).

#include <cstddef>
#include <cstdint>
#include <string>

#include "mdlm/core/error.hpp"

namespace mdlm {

struct Dim3 {
  std::int64_t x = 1, y = 1, z = 1;
  std::int64_t count() const { return x * y * z; }
};

struct LaunchConfig {
  const char* kernel = "?";      // for messages
  Dim3 grid, block;
  std::size_t static_smem = 0;   // bytes of the kernel's __shared__ variables
  std::size_t dynamic_smem = 0;  // bytes passed at launch (extern __shared__)
  bool warp_multiple = false;    // the kernel's block reductions need blockDim.x % 32 == 0
  bool empty() const { return grid.count() == 0; }  // nothing to do: launch() issues nothing
};

// The limits a launch is checked against. The defaults are those of every GPU the library
// builds for (sm_80, sm_90) without opting in to more than 48 KiB of shared memory per block;
// Cuda contexts fill them from the device's properties.
struct DeviceLimits {
  std::int64_t max_grid_x = 2147483647, max_grid_y = 65535, max_grid_z = 65535;
  std::int64_t max_block_x = 1024, max_block_y = 1024, max_block_z = 64, max_threads_per_block = 1024;
  std::size_t max_smem_per_block = 48 * 1024;  // static + dynamic, without cudaFuncSetAttribute opt-in
};

// Throws mdlm::Error naming the kernel and the offending value when the launch cannot run.
inline void check_launch(const LaunchConfig& c, const DeviceLimits& l = {}) {
  const std::string k = c.kernel;
  MDLM_CHECK(c.grid.x >= 0 && c.grid.y >= 0 && c.grid.z >= 0, "launch of ", k, ": negative grid ", c.grid.x, "x",
             c.grid.y, "x", c.grid.z);
  if (c.empty()) return;
  MDLM_CHECK(c.grid.x <= l.max_grid_x, "launch of ", k, ": grid.x = ", c.grid.x, " exceeds ", l.max_grid_x);
  MDLM_CHECK(c.grid.y <= l.max_grid_y, "launch of ", k, ": grid.y = ", c.grid.y, " exceeds ", l.max_grid_y);
  MDLM_CHECK(c.grid.z <= l.max_grid_z, "launch of ", k, ": grid.z = ", c.grid.z, " exceeds ", l.max_grid_z);
  MDLM_CHECK(c.block.x >= 1 && c.block.y >= 1 && c.block.z >= 1, "launch of ", k, ": empty block ", c.block.x, "x",
             c.block.y, "x", c.block.z);
  MDLM_CHECK(c.block.x <= l.max_block_x && c.block.y <= l.max_block_y && c.block.z <= l.max_block_z, "launch of ",
             k, ": block ", c.block.x, "x", c.block.y, "x", c.block.z, " exceeds the per-dimension limit");
  MDLM_CHECK(c.block.count() <= l.max_threads_per_block, "launch of ", k, ": ", c.block.count(),
             " threads per block exceed ", l.max_threads_per_block);
  MDLM_CHECK(!c.warp_multiple || c.block.x % 32 == 0, "launch of ", k, ": block of ", c.block.x,
             " threads is not a whole number of warps");
  MDLM_CHECK(c.static_smem + c.dynamic_smem <= l.max_smem_per_block, "launch of ", k, ": shared memory ",
             c.static_smem, " static + ", c.dynamic_smem, " dynamic bytes exceeds ", l.max_smem_per_block);
}

namespace launch_detail {

inline constexpr std::int64_t kThreads = 256;

// Blocks for a grid-stride loop over n items (at least one, at most the grid limit).
inline std::int64_t blocks_for(std::int64_t n, std::int64_t threads = kThreads) {
  std::int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > 2147483647) g = 2147483647;  // grid-stride loops cover any rest
  return g;
}

// A 1-D grid-stride launch over n items.
inline LaunchConfig grid_stride(const char* kernel, std::int64_t n, std::int64_t threads = kThreads) {
  LaunchConfig c;
  c.kernel = kernel;
  c.grid.x = blocks_for(n, threads);
  c.block.x = threads;
  return c;
}

// One thread per item, no grid-stride loop: the grid must cover n exactly.
inline LaunchConfig one_thread_each(const char* kernel, std::int64_t n, std::int64_t threads = kThreads) {
  LaunchConfig c;
  c.kernel = kernel;
  c.grid.x = n <= 0 ? 0 : (n + threads - 1) / threads;
  c.block.x = threads;
  return c;
}

// One block per item (a row, a sequence), with a block reduction over `threads`.
inline LaunchConfig block_each(const char* kernel, std::int64_t n, std::int64_t threads, std::size_t static_smem,
                               std::size_t dynamic_smem = 0) {
  LaunchConfig c;
  c.kernel = kernel;
  c.grid.x = n < 0 ? 0 : n;
  c.block.x = threads;
  c.static_smem = static_smem;
  c.dynamic_smem = dynamic_smem;
  c.warp_multiple = true;
  return c;
}

}  // namespace launch_detail
}  // namespace mdlm
