#pragma once
// Parameters live in one contiguous buffer (their gradients in another of the same layout), with
// named views under the official MDLM names, so the optimizer, the all-reduce and checkpoint
// I/O each touch one buffer. ParamLayout is the memory-free description (names, shapes,
// offsets) used for counting and for `mdlm info`; ParamStore owns the two buffers.

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/tensor.hpp"
#include "mdlm/io/safetensors.hpp"

namespace mdlm {

struct ParamSpec {
  std::string name;                 // official name without the "backbone." prefix
  std::vector<std::int64_t> shape;  // PyTorch shape: [out, in] for Linear weights
  std::int64_t offset = 0;          // elements into the parameter buffer
  std::int64_t numel = 0;
  std::int64_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  std::int64_t cols() const { return shape.size() == 2 ? shape[1] : shape[0]; }
};

class ParamLayout {
 public:
  static constexpr std::int64_t kAlign = 64;  // elements: keeps every parameter 256-byte aligned in fp32

  int add(const std::string& name, std::vector<std::int64_t> shape) {
    MDLM_CHECK(index_.count(name) == 0, "duplicate parameter name '", name, "'");
    MDLM_CHECK(shape.size() == 1 || shape.size() == 2, "parameter '", name, "' must be 1-D or 2-D");
    ParamSpec s{name, std::move(shape), total_, 1};
    for (auto d : s.shape) s.numel *= d;
    total_ += (s.numel + kAlign - 1) / kAlign * kAlign;
    count_ += s.numel;
    index_[name] = static_cast<int>(specs_.size());
    specs_.push_back(s);
    return static_cast<int>(specs_.size() - 1);
  }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(int i) const { return specs_.at(static_cast<std::size_t>(i)); }
  int find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? -1 : it->second;
  }
  std::int64_t parameter_count() const { return count_; }  // what users call "the number of parameters"
  std::int64_t buffer_elements() const { return total_; }  // with alignment padding

 private:
  std::vector<ParamSpec> specs_;
  std::map<std::string, int> index_;
  std::int64_t total_ = 0;
  std::int64_t count_ = 0;
};

// Values in T, gradients in G (fp32 when T is bf16). `capacity` (elements, at least the
// layout's) pads both buffers with zeros, for collectives that split them into equal shards
// (ZeRO-1 across data-parallel ranks).
template <class B, class T, class G = T>
class ParamStore {
 public:
  explicit ParamStore(const ParamLayout& layout, std::int64_t capacity = 0)
      : layout_(layout), values_(std::max<std::int64_t>({layout.buffer_elements(), capacity, 1})),
        grads_(std::max<std::int64_t>({layout.buffer_elements(), capacity, 1})) {
    MemoryOps<B>::zero(values_.data(), values_.bytes());  // padding stays zero: buffers compare and
    MemoryOps<B>::zero(grads_.data(), grads_.bytes());    // checksum as wholes
  }
  // Sets every gradient to zero (one memset over the gradient buffer, ordered on the
  // context's stream on CUDA: no device synchronization).
  void zero_grad(B& ctx) { zero_bytes(ctx, grads_.data(), grads_.bytes()); }

  const ParamLayout& layout() const { return layout_; }
  MatrixView<T, B> value(int i) { return view(values_, i); }
  MatrixView<G, B> grad(int i) { return view(grads_, i); }
  MatrixView<T, B> value(const std::string& name) { return value(checked(name)); }
  MatrixView<G, B> grad(const std::string& name) { return grad(checked(name)); }
  Buffer<T, B>& values() { return values_; }
  Buffer<G, B>& grads() { return grads_; }

  // Every parameter as a Param (value + accumulating gradient), in layout order.
  std::vector<Param<T, G, B>> params() {
    std::vector<Param<T, G, B>> out;
    out.reserve(layout_.specs().size());
    for (std::size_t i = 0; i < layout_.specs().size(); ++i) {
      out.push_back({value(static_cast<int>(i)), grad(static_cast<int>(i))});
    }
    return out;
  }

 private:
  int checked(const std::string& name) const {
    int i = layout_.find(name);
    if (i < 0) MDLM_FAIL("no parameter named '", name, "'");
    return i;
  }
  template <class U>
  MatrixView<U, B> view(Buffer<U, B>& buf, int i) {
    const ParamSpec& s = layout_.spec(i);
    return MatrixView<U, B>(buf.data() + s.offset, s.rows(), s.cols());
  }
  ParamLayout layout_;
  Buffer<T, B> values_;
  Buffer<G, B> grads_;
};

// Host parameter I/O by official names (prefix "backbone." as in MDLM checkpoints).
template <class T>
void load_params(ParamStore<Host, T>& store, const SafeTensors& file, const std::string& prefix = "backbone.") {
  for (std::size_t i = 0; i < store.layout().specs().size(); ++i) {
    const ParamSpec& s = store.layout().spec(static_cast<int>(i));
    const std::string name = prefix + s.name;
    if (!file.contains(name)) MDLM_FAIL(file.origin(), ": missing parameter '", name, "'");
    std::vector<T> v = file.get<T>(name, s.shape);
    auto dst = store.value(static_cast<int>(i));
    std::copy(v.begin(), v.end(), dst.data);
  }
}

template <class T>
void add_params(SafeTensorsWriter& out, ParamStore<Host, T>& store, const std::string& prefix = "backbone.",
                DType stored = dtype_of<T>()) {
  for (std::size_t i = 0; i < store.layout().specs().size(); ++i) {
    const ParamSpec& s = store.layout().spec(static_cast<int>(i));
    out.add(prefix + s.name, s.shape, store.value(static_cast<int>(i)).data, stored);
  }
}

}  // namespace mdlm
