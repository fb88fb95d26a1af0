#pragma once
// Per-step arena: backend memory handed out by bumping an offset and reset at the start of
// every step, so the steady state allocates nothing (and a CUDA step can be captured as a
// graph). Views from before a reset() must not be used after it.
//
// A growable arena (the default) that runs out takes another block; the next reset() merges
// all blocks into one of the high-water size, so from the second step on there is exactly one
// block and no allocation. A fixed arena throws mdlm::Error instead of growing.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

template <class B>
class Arena {
 public:
  static constexpr std::size_t kAlignment = 256;  // cuBLASLt and vector loads want >= 16
  enum class Growth { Growable, Fixed };

  explicit Arena(std::size_t capacity_bytes = 1 << 20, Growth growth = Growth::Growable) : growth_(growth) {
    add_block(align_up(capacity_bytes));
  }
  // Blocks allocated on the context's device (MemoryOps<B>::allocate(ctx, bytes)); the context
  // must outlive the arena.
  explicit Arena(const B& ctx, std::size_t capacity_bytes = 1 << 20, Growth growth = Growth::Growable)
      : ctx_(&ctx), growth_(growth) {
    add_block(align_up(capacity_bytes));
  }

  template <class T>
  View<T, B> alloc(Shape shape) {
    const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * sizeof(T);
    std::size_t start = align_up(offset_);
    if (start + bytes > blocks_.back().bytes()) {
      if (growth_ == Growth::Fixed) {
        MDLM_FAIL("arena out of memory: request of ", bytes, " bytes for shape ", shape, " at offset ", start,
                  " exceeds capacity ", capacity(), " bytes");
      }
      retired_ += start;
      add_block(align_up(std::max(bytes, blocks_.back().bytes())));
      start = 0;
    }
    offset_ = start + bytes;
    high_water_ = std::max(high_water_, retired_ + offset_);
    return {reinterpret_cast<T*>(blocks_.back().data() + start), shape};
  }

  void reset() {
    if (blocks_.size() > 1) {  // consolidate: one block large enough for the whole last step
      // With a quarter more room: steps whose sizes vary (the head's row count) then rarely
      // grow again, and a step captured as a CUDA graph cannot grow (it fails the capture).
      blocks_.clear();
      add_block(align_up(high_water_ + high_water_ / 4));
    }
    offset_ = 0;
    retired_ = 0;
  }
  std::size_t used() const { return retired_ + offset_; }
  std::size_t high_water() const { return high_water_; }
  std::size_t capacity() const {
    std::size_t c = 0;
    for (const auto& b : blocks_) c += b.bytes();
    return c;
  }
  std::size_t block_count() const { return blocks_.size(); }

 private:
  static std::size_t align_up(std::size_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }
  void add_block(std::size_t bytes) {
    const Shape shape{static_cast<std::int64_t>(bytes)};
    if (ctx_ != nullptr) blocks_.emplace_back(*ctx_, shape);
    else blocks_.emplace_back(shape);
  }

  const B* ctx_ = nullptr;
  Growth growth_;
  std::vector<Buffer<std::byte, B>> blocks_;
  std::size_t offset_ = 0;   // in the last block
  std::size_t retired_ = 0;  // bytes used in earlier blocks (this step)
  std::size_t high_water_ = 0;
};

}  // namespace mdlm
