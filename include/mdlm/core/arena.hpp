#pragma once
// Per-step arena: one allocation of backend memory, handed out by bumping an offset and
// reset at the start of every step, so the steady state allocates nothing (and a CUDA step can
// be captured as a graph). Views from before a reset() must not be used after it.

#include <cstddef>
#include <cstdint>

#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

template <class B>
class Arena {
 public:
  static constexpr std::size_t kAlignment = 256;  // cuBLASLt and vector loads want >= 16

  explicit Arena(std::size_t capacity_bytes) : storage_(static_cast<std::int64_t>(capacity_bytes)) {}

  template <class T>
  View<T, B> alloc(Shape shape) {
    std::size_t bytes = static_cast<std::size_t>(shape.numel()) * sizeof(T);
    std::size_t start = align_up(offset_);
    if (start + bytes > capacity()) {
      MDLM_FAIL("arena out of memory: request of ", bytes, " bytes for shape ", shape, " at offset ",
                start, " exceeds capacity ", capacity(), " bytes");
    }
    offset_ = start + bytes;
    high_water_ = offset_ > high_water_ ? offset_ : high_water_;
    return {reinterpret_cast<T*>(storage_.data() + start), shape};
  }

  void reset() { offset_ = 0; }
  std::size_t used() const { return offset_; }
  std::size_t high_water() const { return high_water_; }  // size a later arena from this
  std::size_t capacity() const { return storage_.bytes(); }

 private:
  static std::size_t align_up(std::size_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

  Buffer<std::byte, B> storage_;
  std::size_t offset_ = 0;
  std::size_t high_water_ = 0;
};

}  // namespace mdlm
