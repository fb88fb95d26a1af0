#pragma once
// Staging<B>: host -> backend copies that never synchronize, for data a training step sends to
// the device every step (the batch's tokens and loss mask, a few values per sequence).
//
//   std::byte* h = staging.acquire(ctx, bytes);   // host memory to fill (valid until submit)
//   ... write bytes at h ...
//   staging.submit(ctx, dst, bytes);              // dst: backend memory; ordered on ctx's stream
//
// acquire() and submit() come in pairs. The Host's is a plain copy through a host vector; the
// CUDA one (backend/cuda/staging.cuh) is a ring of pinned blocks, each reused once the copy that
// last read it has run. A Staging lives across steps (Tape::persistent), so the steady state
// allocates nothing.

#include <cstddef>
#include <cstring>
#include <vector>

#include "mdlm/backend/host.hpp"

namespace mdlm {

template <class B>
class Staging;

template <>
class Staging<Host> {
 public:
  std::byte* acquire(const Host&, std::size_t bytes) {
    if (block_.size() < bytes) block_.resize(bytes);
    return block_.data();
  }
  void submit(const Host&, void* dst, std::size_t bytes) {
    if (bytes > 0) std::memcpy(dst, block_.data(), bytes);
  }

 private:
  std::vector<std::byte> block_;
};

}  // namespace mdlm
