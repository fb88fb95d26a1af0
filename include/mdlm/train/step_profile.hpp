#pragma once
// Where a training step's time goes: milliseconds per profiling range (every op and DiT layer,
// Tape::range), per step, against a step budget.
//
//   StepProfile<HostClock> profile;              // CUDA: StepProfile<CudaEventClock>{{ctx}}
//   tape.ranges = profile.hook();                //   (backend/cuda/event_clock.cuh)
//   profile.phase("forward");  ... loss ...
//   profile.phase("backward"); tape.backward(...);
//   profile.end_step();                          // once per step
//   std::fputs(profile.table(step_ms, budget_ms).c_str(), stdout);
//
// Each range is timed inclusively (from its push to its pop) and exclusively (less the ranges
// opened inside it); the exclusive times of all ranges add up to the time the ranges cover, so
// a table of them is a breakdown of the step. Names are "phase/name" ("backward/linear").
//
// A Clock gives marks in time and the milliseconds between two of them:
//   Mark mark()                        a point in the work queued so far
//   double ms(Mark from, Mark to)      after wait()
//   void wait()                        every mark made so far has happened
//   void recycle()                     marks made so far are no longer needed

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/core/error.hpp"

namespace mdlm {

// The Host's clock: the Host runs an op to its end before it returns.
struct HostClock {
  using Mark = std::chrono::steady_clock::time_point;
  Mark mark() const { return std::chrono::steady_clock::now(); }
  double ms(Mark from, Mark to) const { return std::chrono::duration<double, std::milli>(to - from).count(); }
  void wait() const {}
  void recycle() const {}
};

template <class Clock>
class StepProfile {
 public:
  struct Row {
    std::string name;
    double inclusive_ms = 0, exclusive_ms = 0;  // per step
    double calls = 0;                           // per step
  };

  explicit StepProfile(Clock clock = Clock{}) : clock_(std::move(clock)) {}
  StepProfile(const StepProfile&) = delete;
  StepProfile& operator=(const StepProfile&) = delete;

  // The tape hook (the profile must outlive the tape's use of it).
  RangeHook hook() {
    return {this, [](void* self, const char* name) { static_cast<StepProfile*>(self)->push(name); },
            [](void* self) { static_cast<StepProfile*>(self)->pop(); }};
  }
  // Names the ranges opened from now on "phase/name".
  void phase(std::string p) { phase_ = std::move(p); }

  // Ends a step: waits for its work and adds its ranges' times to their names.
  void end_step() {
    MDLM_CHECK(open_.empty(), "step profile: ", open_.size(), " ranges still open at the end of a step");
    clock_.wait();
    for (const Closed& c : closed_) {
      const double t = clock_.ms(c.from, c.to);
      Total& total = totals_[c.name];
      total.inclusive += t;
      total.exclusive += t - c.children_ms(*this);
      total.calls += 1;
    }
    closed_.clear();
    pending_.clear();
    clock_.recycle();
    ++steps_;
  }

  std::int64_t steps() const { return steps_; }

  // Every name, per step, by exclusive time (largest first).
  std::vector<Row> rows() const {
    std::vector<Row> out;
    const double n = steps_ > 0 ? static_cast<double>(steps_) : 1.0;
    for (const auto& [name, t] : totals_) out.push_back({name, t.inclusive / n, t.exclusive / n, t.calls / n});
    std::sort(out.begin(), out.end(), [](const Row& a, const Row& b) { return a.exclusive_ms > b.exclusive_ms; });
    return out;
  }

  // A text table: each name's exclusive and inclusive ms per step and its share of `step_ms`
  // (the measured step), the time no range covers, and the step against `budget_ms` (0: none).
  std::string table(double step_ms, double budget_ms = 0) const {
    std::string s;
    char line[256];
    std::snprintf(line, sizeof line, "%-34s %10s %10s %7s %7s\n", "range (phase/name)", "excl ms", "incl ms", "calls", "share");
    s += line;
    double covered = 0;
    for (const Row& r : rows()) {
      covered += r.exclusive_ms;
      std::snprintf(line, sizeof line, "%-34s %10.3f %10.3f %7.0f %6.1f%%\n", r.name.c_str(), r.exclusive_ms, r.inclusive_ms,
                    r.calls, step_ms > 0 ? 100.0 * r.exclusive_ms / step_ms : 0.0);
      s += line;
    }
    std::snprintf(line, sizeof line, "%-34s %10.3f %10s %7s %6.1f%%\n", "(outside every range)", step_ms - covered, "", "",
                  step_ms > 0 ? 100.0 * (step_ms - covered) / step_ms : 0.0);
    s += line;
    std::snprintf(line, sizeof line, "step %.3f ms", step_ms);
    s += line;
    if (budget_ms > 0) {
      std::snprintf(line, sizeof line, " against a budget of %.3f ms (%.2fx)", budget_ms, step_ms / budget_ms);
      s += line;
    }
    s += "\n";
    return s;
  }

 private:
  using Mark = decltype(std::declval<Clock&>().mark());
  struct Open {
    std::string name;
    Mark from;
    std::size_t first_child;  // closed_ index where this range's direct children start
  };
  struct Closed {
    std::string name;
    Mark from, to;
    std::vector<std::size_t> children;  // direct children (indices into closed_)
    double children_ms(const StepProfile& p) const {
      double t = 0;
      for (std::size_t k : children) t += p.clock_.ms(p.closed_[k].from, p.closed_[k].to);
      return t;
    }
  };
  struct Total {
    double inclusive = 0, exclusive = 0, calls = 0;
  };

  void push(const char* name) {
    open_.push_back({phase_.empty() ? std::string(name) : phase_ + "/" + name, clock_.mark(), pending_.size()});
  }
  void pop() {
    MDLM_CHECK(!open_.empty(), "step profile: a range closed that was never opened");
    Open o = std::move(open_.back());
    open_.pop_back();
    Closed c{std::move(o.name), o.from, clock_.mark(), {}};
    // The ranges closed since this one opened, and not yet claimed by a deeper range, are its children.
    c.children.assign(pending_.begin() + static_cast<std::ptrdiff_t>(o.first_child), pending_.end());
    pending_.resize(o.first_child);
    closed_.push_back(std::move(c));
    pending_.push_back(closed_.size() - 1);
  }

  Clock clock_;
  std::string phase_;
  std::vector<Open> open_;
  std::vector<Closed> closed_;
  std::vector<std::size_t> pending_;  // closed ranges whose parent has not closed yet
  std::map<std::string, Total> totals_;
  std::int64_t steps_ = 0;
};

}  // namespace mdlm
