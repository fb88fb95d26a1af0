#pragma once
// The gradient all-reduce of data-parallel training, overlapped with the backward pass (what
// PyTorch DDP's buckets do).
//
// A model marks in its forward pass where each range of the parameter-gradient buffer stops
// receiving contributions (Tape::mark_gradients_final; DiT marks its front, every block and its
// output layer). The backward pass runs the tape in reverse, so when it passes a mark the
// gradients of that range are final and the tape calls its on_gradients_final hook, which is
// GradientBuckets::ready. The last layers' gradients are final first, so the buffer is started
// from its end downwards: as soon as the final gradients just below the part already started
// reach `bucket_bytes`, they are started as one bucket (Communicator::start_all_reduce_sum) while
// the backward pass goes on with the earlier layers. finish() starts whatever is left and waits.
//
//   GradientBuckets buckets(comm, ctx, grads, n, 25 << 20);
//   tape.on_gradients_final = buckets.hook();
//   buckets.arm();                 // before the backward pass that completes the gradients (the
//   tape.backward(loss, seed);     // last micro-batch when accumulating)
//   buckets.finish();              // every gradient summed over the ranks
//
// A range reported twice, or overlapping one already reported or started, is an error: it would
// mean two forward passes on one tape, whose gradients are not final at the first one's marks.

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/core/error.hpp"

namespace mdlm {

// PyTorch DDP's default bucket size.
inline constexpr std::int64_t kGradientBucketBytes = std::int64_t{25} << 20;

template <class Comm, class B, class G>
class GradientBuckets {
 public:
  using Range = std::pair<std::int64_t, std::int64_t>;  // [begin, end) in elements

  GradientBuckets(Comm& comm, B& ctx, G* data, std::int64_t n, std::int64_t bucket_bytes)
      : comm_(comm), ctx_(ctx), data_(data), n_(n),
        bucket_(std::max<std::int64_t>(1, bucket_bytes / static_cast<std::int64_t>(sizeof(G)))) {
    MDLM_CHECK(n >= 0 && bucket_bytes > 0, "gradient buckets: ", n, " elements in buckets of ", bucket_bytes, " bytes");
  }
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // The tape hook that reports final ranges here (the object must outlive the tape's use of it).
  GradientsFinalHook hook() {
    return {this, [](void* self, std::int64_t begin, std::int64_t end) { static_cast<GradientBuckets*>(self)->ready(begin, end); }};
  }

  // Starts a pass: ranges reported from now on are final. Outside arm() .. finish() reports are
  // ignored (the micro-batches before the last one of gradient accumulation).
  void arm() {
    armed_ = true;
    started_from_ = n_;
    ready_.clear();
    started_.clear();
  }
  bool armed() const { return armed_; }
  // Forgets an armed pass whose backward never ran (a step abandoned by a failed CUDA-graph
  // capture, train/step_graph.hpp), so the step can be taken again.
  void disarm() {
    armed_ = false;
    ready_.clear();
  }

  void ready(std::int64_t begin, std::int64_t end) {
    if (!armed_ || begin == end) return;
    MDLM_CHECK(begin >= 0 && begin < end && end <= n_, "gradient buckets: final range [", begin, ", ", end,
               ") outside the gradient buffer of ", n_, " elements");
    const auto at = std::lower_bound(ready_.begin(), ready_.end(), Range{begin, end});
    const bool clash = end > started_from_ || (at != ready_.end() && at->first < end) ||
                       (at != ready_.begin() && std::prev(at)->second > begin);
    MDLM_CHECK(!clash, "gradient buckets: the gradients [", begin, ", ", end,
               ") were reported final twice (two forward passes on one tape before its backward?)");
    ready_.insert(at, Range{begin, end});
    merge();
    // The final gradients adjacent to (just below) the started part, once they fill a bucket.
    if (!ready_.empty() && ready_.back().second == started_from_ && started_from_ - ready_.back().first >= bucket_) {
      start(ready_.back().first, started_from_);
      ready_.pop_back();
    }
  }

  // The backward pass is over: every gradient is final. Starts the rest and waits for all.
  void finish() {
    if (!armed_) return;
    if (started_from_ > 0) start(0, started_from_);
    ready_.clear();
    armed_ = false;
    comm_.finish_all_reduces(ctx_);
  }

  // The ranges started in the last pass, in order (the last one by finish()).
  const std::vector<Range>& started() const { return started_; }

 private:
  void merge() {
    std::vector<Range> out;
    for (const Range& r : ready_) {
      if (!out.empty() && out.back().second == r.first) out.back().second = r.second;
      else out.push_back(r);
    }
    ready_.swap(out);
  }
  void start(std::int64_t begin, std::int64_t end) {
    comm_.start_all_reduce_sum(ctx_, data_ + begin, end - begin);
    started_.push_back({begin, end});
    started_from_ = begin;
  }

  Comm& comm_;
  B& ctx_;
  G* data_;
  std::int64_t n_, bucket_;
  bool armed_ = false;
  std::int64_t started_from_ = 0;  // [started_from_, n) has been started
  std::vector<Range> ready_;       // final and not started: sorted, disjoint, merged
  std::vector<Range> started_;
};

}  // namespace mdlm
