#pragma once
// The autograd tape. Forward ops allocate their outputs from the step's activation arena,
// register them as variables, and record a typed context; backward() runs the recorded ops in
// reverse, each consuming its context (ops/*.hpp keep forward and backward side by side).
//
// Gradients:
//   - parameters (Param: value and gradient in the parameter buffers, not on the tape) and
//     other leaves accumulate: grad += ...;
//   - activation gradients are written, not accumulated: the first op to produce an
//     activation's gradient (in reverse order) overwrites it, and only later contributions
//     (fan-out, e.g. the residual stream feeding both LayerNorm and the residual add) add to
//     it. The tape tracks which gradients have been written, so no activation gradient is
//     ever memset, except one that is read before anything wrote it (zero-filled then).
//   - column slices of a variable (the six adaLN chunks) are variables of their own whose
//     gradients are views into the parent's gradient (zero-filled once when first sliced,
//     so slices accumulate into it).
//
// Final gradients: a model marks in its forward pass (mark_gradients_final) where a range of the
// parameter-gradient buffer stops receiving contributions; when backward() passes the mark, the
// range is final and on_gradients_final is called with it (data-parallel training starts that
// range's all-reduce there: dist/gradient_buckets.hpp).
//
// Profiling ranges: Tape::range(name) opens a named range until the returned object goes, around
// a layer or an op's forward; while recording, the backward pass gets the same range around the
// backward of what the range held. The ranges go to the tape's RangeHook: on CUDA NVTX (nsys and
// ncu show every layer and op by name), on the Host none unless a caller sets one.
//
// Step-to-step state: persistent<S>() holds one object per type across reset() for the tape's
// life (MaskedDiffusion::loss keeps its staging ring there).
//
// Contexts are trivially copyable records stored in a host byte arena with the address of
// their op's backward function: typed ops, no virtual calls, no allocation in the steady state.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <vector>

#include "mdlm/core/arena.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/core/tensor.hpp"

namespace mdlm {

// A variable on the tape: its id and its value (rows x cols, row-major, maybe strided).
template <class T, class B>
struct Var {
  int id = -1;
  MatrixView<T, B> value;
  std::int64_t rows() const { return value.rows; }
  std::int64_t cols() const { return value.cols; }
  bool valid() const { return id >= 0; }
};

// A parameter: its value (type T, what the forward reads) and its gradient (type G, fp32 in
// bf16-mixed training), which always accumulates. An empty grad means "frozen".
template <class T, class G, class B>
struct Param {
  MatrixView<T, B> value;
  MatrixView<G, B> grad;
  bool valid() const { return value.data != nullptr; }
  std::int64_t rows() const { return value.rows; }
  std::int64_t cols() const { return value.cols; }
  std::int64_t numel() const { return value.rows * value.cols; }
};

// Training-time settings ops read from the tape.
struct TapeOptions {
  bool training = false;     // dropout on
  std::uint64_t seed = 0;    // Philox seed for dropout
  std::uint32_t step = 0;    // Philox step for dropout
  // Data-parallel: the tape's sequences are [batch_first, batch_first + its batch) of a global
  // batch of batch_global sequences (0: the tape holds the whole batch), so draws are keyed as
  // one process holding the whole batch keys them.
  std::int64_t batch_first = 0, batch_global = 0;
};

// Called by backward() with a range [begin, end) of the parameter-gradient buffer (elements)
// whose gradients are final: no op still to run touches them.
struct GradientsFinalHook {
  void* target = nullptr;
  void (*call)(void* target, std::int64_t begin, std::int64_t end) = nullptr;
  void operator()(std::int64_t begin, std::int64_t end) const {
    if (call != nullptr) call(target, begin, end);
  }
};

// Where profiling ranges go (Tape::ranges): push(name) opens one, pop() closes the last.
struct RangeHook {
  void* target = nullptr;
  void (*push)(void* target, const char* name) = nullptr;
  void (*pop)(void* target) = nullptr;
  bool on() const { return push != nullptr && pop != nullptr; }
};

// Backends with profiling ranges of their own (CUDA: NVTX).
template <class B>
concept RangeBackend = requires(B& b, const char* name) {
  b.range_push(name);
  b.range_pop();
};

// Tape<B, T, G>: activations and their gradients in T; parameter gradients in G.
template <class B, class T, class G = T>
class Tape {
 public:
  using Backend = B;
  using Value = T;
  using Grad = G;
  using VarT = Var<T, B>;
  using ParamT = Param<T, G, B>;
  using BackwardFn = void (*)(Tape&, const void*);

  explicit Tape(B& backend, std::size_t arena_bytes = 1 << 20)
      : backend_(backend), values_(backend, arena_bytes), grads_(backend, arena_bytes) {
    if constexpr (RangeBackend<B>) {
      ranges = {&backend, [](void* b, const char* name) { static_cast<B*>(b)->range_push(name); },
                [](void* b) { static_cast<B*>(b)->range_pop(); }};
    }
  }

  B& backend() { return backend_; }
  TapeOptions options;
  GradientsFinalHook on_gradients_final;  // kept across reset()
  RangeHook ranges;                       // profiling ranges (the backend's, if it has them)

  // A profiling range named `name` (a string that outlives the tape's records) until the object
  // goes: forward now, and the backward of the ops recorded inside it.
  class Range {
   public:
    Range(Tape& tape, const char* name) : tape_(tape), name_(name) {
      if (!tape_.ranges.on()) return;
      tape_.ranges.push(tape_.ranges.target, name_);
      tape_.template record<RangeCloseOp>(RangeMark{name_});  // backward reaches it last: closes
    }
    ~Range() {
      if (!tape_.ranges.on()) return;
      tape_.ranges.pop(tape_.ranges.target);
      tape_.template record<RangeOpenOp>(RangeMark{name_});  // backward reaches it first: opens
    }
    Range(const Range&) = delete;
    Range& operator=(const Range&) = delete;

   private:
    Tape& tape_;
    const char* name_;
  };
  [[nodiscard]] Range range(const char* name) { return Range(*this, name); }

  // Starts a new step: forgets variables and records, recycles the arenas.
  void reset() {
    vars_.clear();
    records_.clear();
    ctx_bytes_.clear();
    values_.reset();
    grads_.reset();
    rng_offset_ = 0;
  }

  // ---- variables ---------------------------------------------------------------------------
  // A new activation of rows x cols from the arena, its rows `ld_multiple` apart rounded up:
  // ld = cols rounded up to a multiple of ld_multiple (the output head pads its logits' rows for
  // aligned GEMMs, nn/dit.hpp). The pad columns are never written or read by the ops; the
  // gradient takes the same stride when written in place (grad_in_place), else a compact one.
  VarT new_var(std::int64_t rows, std::int64_t cols, std::int64_t ld_multiple = 1) {
    MDLM_CHECK(ld_multiple >= 1, "new_var: leading-dimension multiple ", ld_multiple, " must be positive");
    const std::int64_t ld = (cols + ld_multiple - 1) / ld_multiple * ld_multiple;
    auto v = values_.template alloc<T>(Shape{rows, ld});
    return add(MatrixView<T, B>(v.data, rows, cols, ld), {}, false);
  }
  // Scratch memory for an op's context (saved statistics, probabilities): lives until reset().
  template <class U>
  View<U, B> scratch(Shape shape) {
    return values_.template alloc<U>(shape);
  }
  // A leaf whose gradient lives in caller memory and accumulates (parameters, test inputs).
  VarT leaf(MatrixView<T, B> value, MatrixView<T, B> grad) { return add(value, grad, true); }
  // A leaf with no gradient (constant inputs).
  VarT constant(MatrixView<T, B> value) { return add(value, {}, false, /*no_grad=*/true); }

  // Columns [col0, col0 + cols) of `parent` as a variable; its gradient is the same columns of
  // the parent's gradient.
  VarT slice_cols(VarT parent, std::int64_t col0, std::int64_t cols) {
    MDLM_CHECK(col0 >= 0 && col0 + cols <= parent.cols(), "slice [", col0, ", ", col0 + cols, ") out of ",
               parent.cols(), " columns");
    Entry& p = vars_[static_cast<std::size_t>(parent.id)];
    MDLM_CHECK(!p.accumulate, "slicing a leaf is not supported");
    if (!p.has_slices) {  // columns no slice covers (or no op writes) read as zero gradient
      ensure_grad(p);
      fill_zero(backend_, p.grad);
      p.written = true;
    }
    MatrixView<T, B> v(parent.value.data + col0, parent.rows(), cols, parent.value.ld);
    MatrixView<T, B> g(p.grad.data + col0, parent.rows(), cols, p.grad.ld);
    VarT child = add(v, g, false);
    vars_[static_cast<std::size_t>(parent.id)].has_slices = true;
    return child;
  }

  // ---- gradients (for ops' backward) -------------------------------------------------------
  bool requires_grad(VarT v) const { return !vars_[static_cast<std::size_t>(v.id)].no_grad; }

  // The gradient of an op's output, to read. Zero-filled if nothing has written it.
  MatrixView<T, B> grad_out(VarT v) {
    Entry& e = vars_[static_cast<std::size_t>(v.id)];
    ensure_grad(e);
    if (!e.written && !e.accumulate) {
      fill_zero(backend_, e.grad);
      e.written = true;
    }
    return e.grad;
  }

  // Where an op writes the gradient of one of its inputs. `accumulate` tells it to add (the
  // gradient already holds other contributions, or it is a leaf) instead of overwriting.
  struct GradTarget {
    MatrixView<T, B> grad;
    bool accumulate = false;
    bool needed = false;  // false: the input takes no gradient; skip the work
  };
  GradTarget grad_in(VarT v) {
    Entry& e = vars_[static_cast<std::size_t>(v.id)];
    if (e.no_grad) return {};
    ensure_grad(e);
    GradTarget t{e.grad, e.accumulate || e.written, true};
    e.written = true;
    return t;
  }

  // grad_in for an op whose backward may write its input's gradient over the input's value,
  // element by element, because no op still to run reads that value (the cross-entropy's
  // logits: the head's backward reads its input and weights, not its output). If nothing has
  // written the gradient yet, it takes the value's memory (and row stride): no second buffer of
  // that size.
  GradTarget grad_in_place(VarT v) {
    Entry& e = vars_[static_cast<std::size_t>(v.id)];
    if (!e.no_grad && e.grad.data == nullptr && !e.accumulate && !e.written && !e.has_slices) e.grad = e.value;
    return grad_in(v);
  }

  // ---- recording and backward --------------------------------------------------------------
  bool recording() const { return recording_; }
  // Activation-arena bytes handed out since the last reset() (values and op scratch).
  std::size_t values_used() const { return values_.used(); }
  void set_recording(bool on) { recording_ = on; }

  template <class Op, class Ctx>
  void record(const Ctx& ctx) {
    static_assert(std::is_trivially_copyable_v<Ctx>, "tape contexts must be trivially copyable");
    if (!recording_) return;
    const std::size_t at = ctx_bytes_.size();
    ctx_bytes_.resize(at + sizeof(Ctx));
    std::memcpy(ctx_bytes_.data() + at, &ctx, sizeof(Ctx));
    records_.push_back({&call_backward<Op, Ctx>, at});
  }

  // Marks this point of the forward pass: the parameter gradients [begin, end) (elements of the
  // gradient buffer) take no contribution from the ops recorded before it. backward() reaches
  // the mark after the backward of every op recorded after it, and reports the range final.
  void mark_gradients_final(std::int64_t begin, std::int64_t end) { record<GradientsFinalOp>(GradientsFinalMark{begin, end}); }

  // Sets d(loss)/d(output) and runs every recorded op's backward in reverse order.
  void backward(VarT output, MatrixView<const T, B> output_grad) {
    Entry& e = vars_[static_cast<std::size_t>(output.id)];
    ensure_grad(e);
    copy(backend_, output_grad, e.grad);
    e.written = true;
    for (auto it = records_.rbegin(); it != records_.rend(); ++it) {
      it->fn(*this, ctx_bytes_.data() + it->offset);
    }
  }

  // Deterministic Philox index ranges for ops that draw (dropout): each call reserves n indices.
  std::uint64_t reserve_rng(std::uint64_t n) {
    std::uint64_t at = rng_offset_;
    rng_offset_ += n;
    return at;
  }
  // The same for a draw over rows x cols values of the tape's sequences (rows = sequences x
  // seq_len): the range of the whole global batch is reserved (TapeOptions::batch_global) and the
  // index of this tape's first value in it returned, so every sequence draws what it would draw
  // in one process holding the whole batch.
  std::uint64_t reserve_rng_rows(std::int64_t rows, std::int64_t cols, std::int64_t seq_len) {
    const std::int64_t global_rows = options.batch_global > 0 ? options.batch_global * seq_len : rows;
    return reserve_rng(static_cast<std::uint64_t>(global_rows * cols)) +
           static_cast<std::uint64_t>(options.batch_first * seq_len * cols);
  }

  // The tape's object of type S (default-constructed on first use), kept across reset() for as
  // long as the tape lives: state a loss keeps from step to step without being a member of the
  // (copyable, const) objective, e.g. MaskedDiffusion's pinned staging ring on CUDA. One object
  // per type, looked up by type (a short list: a handful of types at most).
  template <class S>
  S& persistent() {
    for (const Persistent& p : persistent_) {
      if (p.type == std::type_index(typeid(S))) return *static_cast<S*>(p.object.get());
    }
    persistent_.push_back({std::type_index(typeid(S)), std::shared_ptr<void>(std::make_shared<S>())});
    return *static_cast<S*>(persistent_.back().object.get());
  }

  std::size_t var_count() const { return vars_.size(); }
  std::size_t record_count() const { return records_.size(); }

 private:
  struct Entry {
    MatrixView<T, B> value;
    MatrixView<T, B> grad;
    bool accumulate = false;  // leaf: gradient accumulates
    bool no_grad = false;
    bool written = false;
    bool has_slices = false;
  };
  struct Record {
    BackwardFn fn;
    std::size_t offset;
  };

  struct Persistent {
    std::type_index type;
    std::shared_ptr<void> object;  // type-erased owner: destroys the S it holds
  };

  struct GradientsFinalMark {
    std::int64_t begin, end;
  };
  struct GradientsFinalOp {
    static void backward(Tape& tape, const GradientsFinalMark& m) { tape.on_gradients_final(m.begin, m.end); }
  };

  struct RangeMark {
    const char* name;
  };
  struct RangeOpenOp {
    static void backward(Tape& tape, const RangeMark& m) { tape.ranges.push(tape.ranges.target, m.name); }
  };
  struct RangeCloseOp {
    static void backward(Tape& tape, const RangeMark&) { tape.ranges.pop(tape.ranges.target); }
  };

  template <class Op, class Ctx>
  static void call_backward(Tape& tape, const void* raw) {
    Ctx ctx;
    std::memcpy(&ctx, raw, sizeof(Ctx));  // ctx_bytes_ may not be aligned for Ctx after resizes
    Op::backward(tape, ctx);
  }

  VarT add(MatrixView<T, B> value, MatrixView<T, B> grad, bool accumulate, bool no_grad = false) {
    Entry e;
    e.value = value;
    e.grad = grad;
    e.accumulate = accumulate;
    e.no_grad = no_grad;
    vars_.push_back(e);
    return VarT{static_cast<int>(vars_.size() - 1), value};
  }
  void ensure_grad(Entry& e) {
    MDLM_CHECK(!e.no_grad, "gradient requested for a constant");
    if (e.grad.data == nullptr) {
      auto g = grads_.template alloc<T>(Shape{e.value.rows, e.value.cols});
      e.grad = MatrixView<T, B>(g.data, e.value.rows, e.value.cols);
    }
  }

  B& backend_;
  Arena<B> values_;
  Arena<B> grads_;
  std::vector<Entry> vars_;
  std::vector<Record> records_;
  std::vector<unsigned char> ctx_bytes_;
  std::uint64_t rng_offset_ = 0;
  bool recording_ = true;
  std::vector<Persistent> persistent_;  // declared last: destroyed first, while the arenas still live
};

}  // namespace mdlm
