#pragma once
// The MDLM objective as a compile-time component (DESIGN §1, §3):
//
//   MaskedDiffusion<Schedule, Subs> objective{schedule, {.mask_id = 50257}};
//   auto out = objective.loss(tape, model, params, batch, rng, step);   // out.loss on the tape
//
// One step: draw one t per sequence (stratified over the micro-batch by default), mask each
// token of x0 independently with probability 1 - alpha_t (Philox, purpose Mask, so every backend
// draws the same z_t), run the backbone on z_t (sigma(t) as input with time conditioning, 0
// otherwise), and take the SUBS NELBO: the output head runs only on the masked rows that count
// (unmasked rows carry zero loss under SUBS), then the fused log-softmax + weighted NLL.
// Autoregressive is the AR baseline's token-mean NLL on the same backbone interface.
// Both build their per-token inputs in backend memory (diffusion/subs_prepare.hpp kernels, one
// staged copy in): nothing in a step waits for the device (issue 17).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/diffusion/schedule.hpp"
#include "mdlm/backend/staging.hpp"
#include "mdlm/diffusion/subs_loss.hpp"
#include "mdlm/diffusion/subs_prepare.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/ops/embedding.hpp"
#include "mdlm/ops/gather.hpp"
#include "mdlm/ops/mask.hpp"

namespace mdlm {

// The SUBS parameterization: zero masking probabilities (mask logit - 1e6) and carry-over
// unmasking (unmasked rows are copied from z_t). It is what makes the head trimming exact.
struct Subs {
  static constexpr double kMaskLogitShift = kSubsMaskLogitShift;
};

enum class TimeSampling { Stratified, Uniform };

// One t per sequence. Stratified: u_i = (r + i/n) mod 1 with one r per step; uniform: u_i
// independent; then t = (1 - eps) u + eps. With `discrete_steps` T > 0, t is put on the grid
// {1/T, ..., 1}: t = floor(u T) / T + 1/T (as the official code does).
inline std::vector<double> sample_times(Philox rng, std::uint32_t step, std::int64_t n, TimeSampling kind, double eps,
                                        int discrete_steps = 0) {
  MDLM_CHECK(n > 0, "sample_times: batch of ", n);
  std::vector<double> t(static_cast<std::size_t>(n));
  const double r = rng.uniform_double(Purpose::Time, step, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    double u = kind == TimeSampling::Stratified
                   ? std::fmod(r + static_cast<double>(i) / static_cast<double>(n), 1.0)
                   : rng.uniform_double(Purpose::Time, step, static_cast<std::uint64_t>(i) + 1);
    double ti = (1.0 - eps) * u + eps;
    if (discrete_steps > 0) {
      ti = std::floor(ti * discrete_steps) / discrete_steps + 1.0 / discrete_steps;
      ti = std::min(ti, 1.0);
    }
    t[static_cast<std::size_t>(i)] = ti;
  }
  return t;
}

// A batch of token sequences on the host (the loader's output).
struct TokenBatch {
  const std::int32_t* x0 = nullptr;  // (B*L)
  std::int64_t batch = 0, seq_len = 0;
  const double* loss_mask = nullptr;  // (B*L), 1 = counts; nullptr: every token counts
  // Data-parallel: these B sequences are [first, first + B) of a global batch of global_batch
  // sequences (0: the batch is whole), whose loss denominator (the token count of its token mean)
  // is loss_denominator (0: this batch's own). Draws are keyed by the global sequence and token
  // index, and the loss is this slice's share of the global batch's loss.
  std::int64_t first = 0, global_batch = 0;
  double loss_denominator = 0;
};

struct DiffusionOptions {
  std::int64_t mask_id = -1;
  TimeSampling sampling = TimeSampling::Stratified;
  double t_eps = 1e-3;       // t in [eps, 1)
  int discrete_steps = 0;    // 0: continuous-time NELBO; T > 0: the discrete-time one
  bool trim_head = true;     // run the output head only on rows that carry loss
  // With trim_head: the head's row count is rounded up to a multiple of this (at most all rows)
  // with rows of weight zero, so the head's GEMMs take few distinct shapes (a bounded cuBLASLt
  // plan cache) and tensor-core-friendly ones. 0: 128 on CUDA, 1 on the Host.
  std::int64_t head_row_multiple = 0;
};

// What one loss evaluation drew and built. MaskedDiffusion::loss and Autoregressive::loss keep
// their backend arrays in the tape's scratch (valid until tape.reset()); loss_at and the reference
// paths (loss_host_drawn, loss_host_built) own theirs (the buffers below, which the tape reads in
// backward). The *_device pointers say where they are either way.
template <class B, class T>
struct LossOutput {
  Var<T, B> loss;                    // (1, 1)
  std::vector<double> t, sigma;      // per sequence
  std::vector<std::int32_t> zt;      // (B*L), host copy
  std::int64_t masked = 0;           // masked tokens
  std::int64_t head_rows = 0;        // rows the output head ran on
  std::int64_t loss_tokens = 0;      // tokens in the denominator (sum of the loss mask)
  std::int64_t selected_rows = 0;    // loss(): rows with a non-zero coefficient (the host's count pass)
  Buffer<std::int32_t, B> ids, rows, target;
  Buffer<double, B> coef;
  const std::int32_t* ids_device = nullptr;     // (B*L) z_t, the model's input
  const std::int32_t* rows_device = nullptr;    // trim_head: the partitioned rows (the head's first head_rows)
  const std::int32_t* target_device = nullptr;  // (head_rows)
  const double* coef_device = nullptr;          // (head_rows)
  const std::int32_t* selected_device = nullptr;  // loss() with trim_head: the partition's count (1 value)
};

// Host arrays a loss sends to backend memory every step, packed into one block (each at a
// 256-byte boundary) and copied with one non-synchronizing copy through the tape's Staging
// (backend/staging.hpp; on CUDA a pinned ring, so the step never waits for the copy). The block
// lands in the tape's scratch; copy() returns its address, add() each array's offset in it.
class StagedArrays {
 public:
  template <class U>
  std::size_t add(const U* src, std::int64_t count) {
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(U);
    parts_.push_back({src, bytes, total_});
    const std::size_t at = total_;
    total_ += (bytes + 255) / 256 * 256;
    return at;
  }
  template <class B, class T, class G>
  std::byte* copy(Tape<B, T, G>& tape) const {
    B& ctx = tape.backend();
    Staging<B>& staging = tape.template persistent<Staging<B>>();
    std::byte* host = staging.acquire(ctx, total_);
    for (const Part& p : parts_) {
      if (p.bytes > 0) std::memcpy(host + p.offset, p.src, p.bytes);
    }
    std::byte* dev = tape.template scratch<std::byte>(Shape{static_cast<std::int64_t>(std::max<std::size_t>(total_, 1))}).data;
    staging.submit(ctx, dev, total_);
    return dev;
  }

 private:
  struct Part {
    const void* src;
    std::size_t bytes, offset;
  };
  std::vector<Part> parts_;
  std::size_t total_ = 0;
};

// An objective the Trainer and evaluate() take as a type: MaskedDiffusion<Schedule, Subs> or
// Autoregressive. `autoregressive` says which backbone it trains (causal AR or the DiT);
// name() is what checkpoints record; with_mask_id() returns the objective for the data's mask id;
// loss_denominator(batch) is the token count its loss on `batch` is a mean over (data-parallel
// ranks add theirs up to divide by the global batch's).
template <class O>
concept Objective = std::copy_constructible<O> && requires(const O& o, std::int64_t id, const TokenBatch& batch) {
  { O::autoregressive } -> std::convertible_to<bool>;
  { O::name() } -> std::convertible_to<const char*>;
  { o.with_mask_id(id) } -> std::same_as<O>;
  { O::loss_denominator(batch) } -> std::convertible_to<double>;
};

template <class Schedule, class Parameterization = Subs>
class MaskedDiffusion {
  static_assert(check_schedule<Schedule>(), "MaskedDiffusion<Schedule>: Schedule must satisfy mdlm::NoiseSchedule");

 public:
  using schedule_type = Schedule;
  static constexpr bool autoregressive = false;
  static constexpr const char* name() { return "mdlm"; }

  // Without options the mask id is left unset: the Trainer takes it from the data (with_mask_id).
  explicit MaskedDiffusion(Schedule schedule = Schedule{}) : schedule_(schedule) {}
  MaskedDiffusion(Schedule schedule, DiffusionOptions options) : schedule_(schedule), opt_(options) {
    MDLM_CHECK(opt_.mask_id >= 0, "MaskedDiffusion needs a mask id");
    MDLM_CHECK(opt_.t_eps >= 0 && opt_.t_eps < 1, "t_eps ", opt_.t_eps, " must be in [0, 1)");
  }
  const Schedule& schedule() const { return schedule_; }
  const DiffusionOptions& options() const { return opt_; }
  MaskedDiffusion with_mask_id(std::int64_t mask_id) const {
    DiffusionOptions o = opt_;
    o.mask_id = mask_id;
    return MaskedDiffusion(schedule_, o);
  }

  // The NELBO's token mean runs over every token of the loss mask.
  static double loss_denominator(const TokenBatch& batch) {
    const std::int64_t n = batch.batch * batch.seq_len;
    return batch.loss_mask ? subs_loss_denominator(batch.loss_mask, n) : static_cast<double>(n);
  }

  // Draws t and z_t for `step` and returns the NELBO on the tape. The times are drawn for the
  // whole global batch (stratified over it) and the masks keyed by global token index, so a
  // data-parallel slice draws what one process draws for those sequences.
  //
  // Nothing here waits for the device (issue 17): the host draws the B times and, in a "count
  // pass", the same per-token Philox draws the device makes (subs_prepare_token), which give it
  // the head's row count, the statistics and the host copy of z_t without a read-back. x0, the
  // loss mask and the per-sequence values go to backend memory in one non-synchronizing copy
  // (Staging, kept in the tape across steps); there subs_prepare draws z_t and the coefficients,
  // partition_rows puts the rows that carry loss first (the rest after, reversed: CUB's order),
  // and the head runs on the first M = roundup(count, head_row_multiple) rows (at most all), the
  // padding rows with coefficient 0. The device arrays live in the tape's scratch (until reset).
  // Same loss and gradients, bit for bit, as loss_host_drawn() (tests/host/test_loss_device.cpp).
  template <class B, class T, class G>
  LossOutput<B, T> loss(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p, const TokenBatch& batch,
                        Philox rng, std::uint32_t step) const {
    MDLM_CHECK(opt_.mask_id >= 0, "MaskedDiffusion needs a mask id");
    const std::int64_t global = batch.global_batch > 0 ? batch.global_batch : batch.batch;
    MDLM_CHECK(batch.first >= 0 && batch.first + batch.batch <= global, "loss: sequences [", batch.first, ", ",
               batch.first + batch.batch, ") of a global batch of ", global);
    MDLM_CHECK(batch.batch > 0 && batch.seq_len > 0, "loss: empty batch (", batch.batch, " x ", batch.seq_len, ")");
    MDLM_CHECK(!model.config().ar, "MaskedDiffusion needs a DiT backbone, not the AR variant");
    MDLM_CHECK(opt_.mask_id < model.config().vocab, "mask id ", opt_.mask_id, " is outside the model vocabulary of ",
               model.config().vocab);
    const std::int64_t n = batch.batch * batch.seq_len, nb = batch.batch;
    MDLM_CHECK(n <= 2147483647, "loss: ", n, " tokens exceed the 32-bit row index");
    // The embedding's id check, on the host's copy (z_t is x0 or the mask id, checked above).
    check_token_ids(batch.x0, n, model.config().vocab);

    const std::vector<double> all_t = sample_times(rng, step, global, opt_.sampling, opt_.t_eps, opt_.discrete_steps);
    LossOutput<B, T> out;
    out.t.assign(all_t.begin() + batch.first, all_t.begin() + batch.first + batch.batch);
    out.sigma.resize(out.t.size());
    std::vector<double> move(out.t.size()), weight(out.t.size());
    for (std::size_t b = 0; b < out.t.size(); ++b) {
      move[b] = schedule_.move_chance(out.t[b]);
      out.sigma[b] = schedule_.sigma(out.t[b]);
      weight[b] = opt_.discrete_steps > 0 ? discrete_loss_weight(schedule_, out.t[b], opt_.discrete_steps)
                                          : schedule_.loss_weight(out.t[b]);
    }
    // SubsTargets::make's count: the loss mask's sum (n ones without one) unless given.
    const double denominator = batch.loss_denominator > 0 ? batch.loss_denominator : loss_denominator(batch);
    MDLM_CHECK(denominator > 0, "subs loss: the loss mask selects no token");
    SubsPrepareArgs args{batch.x0,       batch.loss_mask, move.data(),
                         weight.data(),  n,               batch.seq_len,
                         denominator,    rng,             step,
                         static_cast<std::uint64_t>(batch.first * batch.seq_len), static_cast<std::int32_t>(opt_.mask_id)};

    // The count pass: the device's draws, on the host.
    out.zt.resize(static_cast<std::size_t>(n));
    {
      std::vector<double> coef(static_cast<std::size_t>(n));
      std::vector<std::uint8_t> flags(static_cast<std::size_t>(n));
      subs_prepare(Host{}, args, out.zt.data(), coef.data(), flags.data());
      for (std::int64_t r = 0; r < n; ++r) {
        out.masked += out.zt[static_cast<std::size_t>(r)] == opt_.mask_id;
        out.loss_tokens += batch.loss_mask == nullptr || batch.loss_mask[r] != 0.0;
        out.selected_rows += flags[static_cast<std::size_t>(r)];
      }
    }

    // Staging: one block, one non-synchronizing copy.
    std::vector<float> sigma_f(out.sigma.begin(), out.sigma.end());
    StagedArrays staged;
    const std::size_t x0_at = staged.add(batch.x0, n);
    const std::size_t mask_at = batch.loss_mask ? staged.add(batch.loss_mask, n) : 0;
    const std::size_t move_at = staged.add(move.data(), nb), weight_at = staged.add(weight.data(), nb);
    const std::size_t sigma_at = staged.add(sigma_f.data(), nb);
    std::byte* dev = staged.copy(tape);
    args.x0 = reinterpret_cast<const std::int32_t*>(dev + x0_at);
    args.loss_mask = batch.loss_mask ? reinterpret_cast<const double*>(dev + mask_at) : nullptr;
    args.move_chance = reinterpret_cast<const double*>(dev + move_at);
    args.weight = reinterpret_cast<const double*>(dev + weight_at);
    const float* sigma_device = reinterpret_cast<const float*>(dev + sigma_at);
    B& ctx = tape.backend();

    std::int32_t* ids = tape.template scratch<std::int32_t>(Shape{n}).data;
    double* coef = tape.template scratch<double>(Shape{n}).data;
    std::uint8_t* flags = tape.template scratch<std::uint8_t>(Shape{n}).data;
    subs_prepare(ctx, args, ids, coef, flags);

    // The Host keeps fp64 sigma from the host (the resident path reads float sigma: other bits
    // in fp64); elsewhere the resident path, which copies nothing and does not synchronize.
    DiTInputs in{ids, nullptr, batch.batch, batch.seq_len, out.sigma.data()};
    if constexpr (!std::is_same_v<B, Host>) {
      in.resident_sigma = true;
      in.sigma_device = sigma_device;
    }
    Var<T, B> h = model.hidden(tape, p, in);
    const std::int32_t* target = args.x0;  // SUBS's target is x0: the staged copy serves
    if (opt_.trim_head) {
      const std::size_t part_bytes = partition_rows_scratch(ctx, n);
      std::int32_t* rows = tape.template scratch<std::int32_t>(Shape{n}).data;
      std::int32_t* selected = tape.template scratch<std::int32_t>(Shape{1}).data;
      std::byte* part =
          part_bytes > 0 ? tape.template scratch<std::byte>(Shape{static_cast<std::int64_t>(part_bytes)}).data : nullptr;
      partition_rows(ctx, flags, n, rows, selected, part, part_bytes);
      const std::int64_t m = std::min(n, (out.selected_rows + head_multiple<B>() - 1) / head_multiple<B>() * head_multiple<B>());
      std::int32_t* head_target = tape.template scratch<std::int32_t>(Shape{std::max<std::int64_t>(m, 1)}).data;
      double* head_coef = tape.template scratch<double>(Shape{std::max<std::int64_t>(m, 1)}).data;
      gather_row_targets(ctx, rows, m, target, coef, head_target, head_coef);
      out.head_rows = m;
      out.selected_device = selected;
      out.rows_device = rows;
      // The Host checks the rows (its memory is the host's); CUDA's come from the partition, a
      // permutation of 0..n-1 by construction, and reading them back would synchronize.
      h = GatherRowsOp<B, T, G>::forward(tape, h, rows, std::is_same_v<B, Host> ? rows : nullptr, m);
      target = head_target;
      coef = head_coef;
    } else {
      out.head_rows = n;
    }
    out.ids_device = ids;
    out.target_device = target;
    out.coef_device = coef;
    Var<T, B> logits = model.head(tape, p, h);
    out.loss = CrossEntropyOp<B, T, G>::forward(tape, logits, {target, coef, opt_.mask_id});
    return out;
  }

  // The path loss() replaced, kept as its reference: z_t drawn on the host (absorbing_mask), then
  // loss_at (host-built targets, synchronizing uploads). Same draws, loss and gradients.
  template <class B, class T, class G>
  LossOutput<B, T> loss_host_drawn(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p,
                                   const TokenBatch& batch, Philox rng, std::uint32_t step) const {
    MDLM_CHECK(opt_.mask_id >= 0, "MaskedDiffusion needs a mask id");
    const std::int64_t global = batch.global_batch > 0 ? batch.global_batch : batch.batch;
    MDLM_CHECK(batch.first >= 0 && batch.first + batch.batch <= global, "loss: sequences [", batch.first, ", ",
               batch.first + batch.batch, ") of a global batch of ", global);
    const std::vector<double> all_t = sample_times(rng, step, global, opt_.sampling, opt_.t_eps, opt_.discrete_steps);
    std::vector<double> t(all_t.begin() + batch.first, all_t.begin() + batch.first + batch.batch);
    const std::int64_t n = batch.batch * batch.seq_len;
    std::vector<double> move(t.size());
    for (std::size_t b = 0; b < t.size(); ++b) move[b] = schedule_.move_chance(t[b]);
    std::vector<std::int32_t> zt(static_cast<std::size_t>(n));
    absorbing_mask(Host{}, batch.x0, move.data(), n, batch.seq_len, rng, step, static_cast<std::int32_t>(opt_.mask_id),
                   zt.data(), static_cast<std::uint64_t>(batch.first * batch.seq_len));
    return loss_at(tape, model, p, batch, std::move(t), std::move(zt));
  }

  // The NELBO for given t (per sequence) and z_t: the deterministic half of loss(), also used to
  // replay the golden fixtures.
  template <class B, class T, class G>
  LossOutput<B, T> loss_at(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p, const TokenBatch& batch,
                           std::vector<double> t, std::vector<std::int32_t> zt) const {
    MDLM_CHECK(opt_.mask_id >= 0, "MaskedDiffusion needs a mask id");
    const std::int64_t n = batch.batch * batch.seq_len;
    MDLM_CHECK(t.size() == static_cast<std::size_t>(batch.batch) && zt.size() == static_cast<std::size_t>(n),
               "loss: ", t.size(), " times and ", zt.size(), " tokens for a batch of ", batch.batch, " x ", batch.seq_len);
    MDLM_CHECK(!model.config().ar, "MaskedDiffusion needs a DiT backbone, not the AR variant");
    MDLM_CHECK(opt_.mask_id < model.config().vocab, "mask id ", opt_.mask_id, " is outside the model vocabulary of ",
               model.config().vocab);
    LossOutput<B, T> out;
    out.t = std::move(t);
    out.zt = std::move(zt);
    out.sigma.resize(out.t.size());
    std::vector<double> weight(out.t.size());
    for (std::size_t b = 0; b < out.t.size(); ++b) {
      out.sigma[b] = schedule_.sigma(out.t[b]);
      weight[b] = opt_.discrete_steps > 0 ? discrete_loss_weight(schedule_, out.t[b], opt_.discrete_steps)
                                          : schedule_.loss_weight(out.t[b]);
    }
    std::vector<double> mask = batch.loss_mask ? std::vector<double>(batch.loss_mask, batch.loss_mask + n)
                                               : std::vector<double>(static_cast<std::size_t>(n), 1.0);
    std::vector<std::int32_t> x0(batch.x0, batch.x0 + n);
    SubsTargets targets = SubsTargets::make(x0, out.zt, mask, weight, batch.seq_len, opt_.mask_id, batch.loss_denominator);
    for (double m : mask) out.loss_tokens += m != 0.0;
    for (std::int32_t z : out.zt) out.masked += z == opt_.mask_id;

    out.ids = upload(tape.backend(), out.zt);
    Var<T, B> h = model.hidden(tape, p, DiTInputs{out.ids.data(), out.zt.data(), batch.batch, batch.seq_len, out.sigma.data()});
    if (opt_.trim_head) {  // keep the rows with a non-zero coefficient
      std::vector<std::int32_t> rows;
      std::vector<std::int32_t> target;
      std::vector<double> coef;
      for (std::int64_t r = 0; r < n; ++r) {
        if (targets.coef[static_cast<std::size_t>(r)] != 0.0) {
          rows.push_back(static_cast<std::int32_t>(r));
          target.push_back(targets.target[static_cast<std::size_t>(r)]);
          coef.push_back(targets.coef[static_cast<std::size_t>(r)]);
        }
      }
      // Rounded up with rows that carry no loss (distinct, as the gather needs; weight 0, so
      // they add exactly zero to the loss and the gradients).
      const std::int64_t multiple = head_multiple<B>();
      const std::int64_t padded = std::min(n, (static_cast<std::int64_t>(rows.size()) + multiple - 1) / multiple * multiple);
      for (std::int64_t r = 0; r < n && static_cast<std::int64_t>(rows.size()) < padded; ++r) {
        if (targets.coef[static_cast<std::size_t>(r)] == 0.0) {
          rows.push_back(static_cast<std::int32_t>(r));
          target.push_back(targets.target[static_cast<std::size_t>(r)]);
          coef.push_back(0.0);
        }
      }
      out.head_rows = static_cast<std::int64_t>(rows.size());
      out.rows = upload(tape.backend(), rows);
      out.target = upload(tape.backend(), target);
      out.coef = upload(tape.backend(), coef);
      h = GatherRowsOp<B, T, G>::forward(tape, h, out.rows.data(), rows.data(), out.head_rows);
    } else {
      out.head_rows = n;
      out.target = upload(tape.backend(), targets.target);
      out.coef = upload(tape.backend(), targets.coef);
    }
    out.ids_device = out.ids.data();
    out.rows_device = out.rows.data();
    out.target_device = out.target.data();
    out.coef_device = out.coef.data();
    Var<T, B> logits = model.head(tape, p, h);
    out.loss = CrossEntropyOp<B, T, G>::forward(tape, logits, {out.target.data(), out.coef.data(), opt_.mask_id});
    return out;
  }

 private:
  // The head's row count is rounded up to a multiple of this (DiffusionOptions::head_row_multiple).
  template <class B>
  std::int64_t head_multiple() const {
    return opt_.head_row_multiple > 0 ? opt_.head_row_multiple : std::is_same_v<B, Host> ? 1 : 128;
  }

  Schedule schedule_;
  DiffusionOptions opt_;
};

// The AR baseline: token-mean NLL of x[1:] given x[:-1] with a causal backbone.
struct Autoregressive {
  static constexpr bool autoregressive = true;
  static constexpr const char* name() { return "ar"; }
  Autoregressive with_mask_id(std::int64_t) const { return *this; }
  // The NLL's token mean runs over every target: positions 1..L-1 of the loss mask.
  static double loss_denominator(const TokenBatch& batch) {
    const std::int64_t n = batch.batch * batch.seq_len;
    return batch.loss_mask ? ar_loss_denominator(batch.loss_mask, n, batch.seq_len)
                           : static_cast<double>(batch.batch * (batch.seq_len - 1));
  }

  // The objectives' common signature: AR draws nothing, so rng and step are unused.
  template <class B, class T, class G>
  LossOutput<B, T> loss(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p, const TokenBatch& batch, Philox,
                        std::uint32_t) const {
    return loss(tape, model, p, batch);
  }

  // As MaskedDiffusion::loss: x (and the loss mask) go to backend memory in one staged copy and
  // ar_prepare builds the targets there; the host validates the ids and counts the targets.
  template <class B, class T, class G>
  LossOutput<B, T> loss(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p, const TokenBatch& batch) const {
    MDLM_CHECK(model.config().ar, "Autoregressive needs the AR (causal) backbone");
    const std::int64_t n = batch.batch * batch.seq_len;
    MDLM_CHECK(batch.batch > 0 && batch.seq_len > 1, "ar loss: ", n, " tokens, length ", batch.seq_len);
    check_token_ids(batch.x0, n, model.config().vocab);
    // ar_targets' count: the targets' loss mask (B (L - 1) ones without one) unless given.
    const double denominator = batch.loss_denominator > 0 ? batch.loss_denominator : loss_denominator(batch);
    MDLM_CHECK(denominator > 0, "ar loss: the loss mask selects no target");
    ArPrepareArgs args{batch.x0, batch.loss_mask, n, batch.seq_len, denominator};
    LossOutput<B, T> out;
    out.zt.assign(batch.x0, batch.x0 + n);
    out.head_rows = n;
    for (std::int64_t r = 0; r < n; ++r) out.loss_tokens += ar_prepare_token(args, r).coef != 0.0;

    StagedArrays staged;
    const std::size_t x_at = staged.add(batch.x0, n);
    const std::size_t mask_at = batch.loss_mask ? staged.add(batch.loss_mask, n) : 0;
    std::byte* dev = staged.copy(tape);
    args.x = reinterpret_cast<const std::int32_t*>(dev + x_at);
    args.loss_mask = batch.loss_mask ? reinterpret_cast<const double*>(dev + mask_at) : nullptr;
    std::int32_t* target = tape.template scratch<std::int32_t>(Shape{n}).data;
    double* coef = tape.template scratch<double>(Shape{n}).data;
    ar_prepare(tape.backend(), args, target, coef);
    out.ids_device = args.x;
    out.target_device = target;
    out.coef_device = coef;
    Var<T, B> logits = model.forward(tape, p, DiTInputs{args.x, nullptr, batch.batch, batch.seq_len, nullptr});
    out.loss = CrossEntropyOp<B, T, G>::forward(tape, logits, {target, coef, -1});
    return out;
  }

  // The path loss() replaced (host-built targets, synchronizing uploads), kept as its reference.
  template <class B, class T, class G>
  LossOutput<B, T> loss_host_built(Tape<B, T, G>& tape, const DiT& model, const Params<B, T, G>& p,
                                   const TokenBatch& batch) const {
    MDLM_CHECK(model.config().ar, "Autoregressive needs the AR (causal) backbone");
    const std::int64_t n = batch.batch * batch.seq_len;
    std::vector<double> mask = batch.loss_mask ? std::vector<double>(batch.loss_mask, batch.loss_mask + n)
                                               : std::vector<double>(static_cast<std::size_t>(n), 1.0);
    std::vector<std::int32_t> x(batch.x0, batch.x0 + n);
    SubsTargets targets = ar_targets(x, mask, batch.seq_len, batch.loss_denominator);
    LossOutput<B, T> out;
    out.zt = x;
    out.head_rows = n;
    for (std::int64_t r = 0; r < n; ++r) out.loss_tokens += targets.coef[static_cast<std::size_t>(r)] != 0.0;
    out.ids = upload(tape.backend(), x);
    out.target = upload(tape.backend(), targets.target);
    out.coef = upload(tape.backend(), targets.coef);
    Var<T, B> logits = model.forward(tape, p, DiTInputs{out.ids.data(), out.zt.data(), batch.batch, batch.seq_len, nullptr});
    out.loss = CrossEntropyOp<B, T, G>::forward(tape, logits, {out.target.data(), out.coef.data(), -1});
    return out;
  }
};

static_assert(Objective<MaskedDiffusion<LogLinearSchedule>> && Objective<Autoregressive>);

}  // namespace mdlm
