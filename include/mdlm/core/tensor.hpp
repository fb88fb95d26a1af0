#pragma once
// Shapes, non-owning views and owning buffers, tagged by backend (mdlm::Host, mdlm::Cuda) so
// that handing device memory to a host op is a compile error, not a crash.
//
//   Shape          up to 6 dims, row-major, contiguous
//   View<T, B>     pointer + shape into memory of backend B (non-owning)
//   MatrixView<T,B> row-major strided 2-D view (rows, cols, leading dimension): GEMM operands
//   Buffer<T, B>   owning, move-only; memory from MemoryOps<B>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "mdlm/core/config.hpp"
#include "mdlm/core/error.hpp"

namespace mdlm {

struct Host;  // backend tags; defined in backend/host.hpp and backend/cuda/context.cuh
struct Cuda;

class Shape {
 public:
  static constexpr int kMaxRank = 6;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) {
    MDLM_CHECK(dims.size() <= kMaxRank, "rank ", dims.size(), " exceeds ", kMaxRank);
    for (std::int64_t d : dims) {
      MDLM_CHECK(d >= 0, "negative dimension ", d);
      dims_[rank_++] = d;
    }
  }

  int rank() const { return rank_; }
  std::int64_t operator[](int i) const {
    MDLM_CHECK(i >= 0 && i < rank_, "dimension index ", i, " out of range for rank ", rank_);
    return dims_[static_cast<std::size_t>(i)];
  }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }
  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.dims_.begin(), a.dims_.begin() + a.rank_, b.dims_.begin());
  }
  std::string str() const {
    std::ostringstream os;
    os << *this;
    return os.str();
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    os << '(';
    for (int i = 0; i < s.rank_; ++i) os << (i ? ", " : "") << s.dims_[static_cast<std::size_t>(i)];
    return os << ')';
  }

 private:
  std::array<std::int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

// Non-owning contiguous tensor view in backend B's memory.
template <class T, class B>
struct View {
  T* data = nullptr;
  Shape shape;

  std::int64_t numel() const { return shape.numel(); }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }
  // View<T> -> View<const T> (a template so that View<const T> declares no self-conversion).
  template <class U, std::enable_if_t<std::is_same_v<U, std::remove_const_t<T>>, int> = 0>
  operator View<const U, B>() const {  // NOLINT(google-explicit-constructor)
    return {data, shape};
  }
};

// Row-major strided matrix view: element (r, c) at data[r * ld + c].
template <class T, class B>
struct MatrixView {
  T* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t ld = 0;

  MatrixView() = default;
  MatrixView(T* d, std::int64_t r, std::int64_t c) : MatrixView(d, r, c, c) {}
  MatrixView(T* d, std::int64_t r, std::int64_t c, std::int64_t l) : data(d), rows(r), cols(c), ld(l) {
    MDLM_CHECK(r >= 0 && c >= 0, "negative matrix shape ", r, "x", c);
    MDLM_CHECK(l >= c && (l >= 1 || r * c == 0), "leading dimension ", l, " < cols ", c);
  }
  // A 2-D contiguous view as a matrix; higher ranks fold all leading dims into rows.
  explicit MatrixView(View<T, B> v) {
    MDLM_CHECK(v.shape.rank() >= 1, "a matrix view needs rank >= 1, got ", v.shape);
    cols = v.shape[v.shape.rank() - 1];
    rows = cols == 0 ? 0 : v.numel() / cols;
    ld = std::max<std::int64_t>(cols, 1);
    data = v.data;
  }
  template <class U, std::enable_if_t<std::is_same_v<U, std::remove_const_t<T>>, int> = 0>
  operator MatrixView<const U, B>() const {  // NOLINT(google-explicit-constructor)
    return {data, rows, cols, ld};
  }
};

// Allocation for a backend; specialized by each backend header.
template <class B>
struct MemoryOps;

// Owning buffer of n elements of T in backend B's memory. Move-only; no value initialization
// (contents are unspecified until written), like cudaMalloc and std::make_unique_for_overwrite.
template <class T, class B>
class Buffer {
  static_assert(std::is_trivially_copyable_v<T>, "buffers hold trivially copyable elements");

 public:
  Buffer() = default;
  explicit Buffer(Shape shape) : shape_(shape) {
    if (shape_.numel() > 0) {
      data_ = static_cast<T*>(MemoryOps<B>::allocate(static_cast<std::size_t>(shape_.numel()) * sizeof(T)));
    }
  }
  explicit Buffer(std::int64_t n) : Buffer(Shape{n}) {}
  // Allocates on the context's device (MemoryOps<B>::allocate(ctx, bytes)).
  template <class Ctx>
  Buffer(const Ctx& ctx, Shape shape) : shape_(shape) {
    if (shape_.numel() > 0) {
      data_ = static_cast<T*>(MemoryOps<B>::allocate(ctx, static_cast<std::size_t>(shape_.numel()) * sizeof(T)));
    }
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), shape_(o.shape_) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      shape_ = o.shape_;
    }
    return *this;
  }
  ~Buffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_.numel(); }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }
  View<T, B> view() { return {data_, shape_}; }
  View<const T, B> view() const { return {data_, shape_}; }
  MatrixView<T, B> matrix() { return MatrixView<T, B>(view()); }
  MatrixView<const T, B> matrix() const { return MatrixView<const T, B>(view()); }

 private:
  void release() {
    if (data_ != nullptr) MemoryOps<B>::deallocate(data_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  Shape shape_;
};

}  // namespace mdlm
