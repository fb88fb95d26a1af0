#pragma once
// The training loop (`mdlm train`): data shards -> shuffled batches -> objective (a type:
// MaskedDiffusion<Schedule, Subs> with any NoiseSchedule, or Autoregressive) -> backward ->
// global-norm clipping -> AdamW on master weights -> EMA, with gradient accumulation, periodic
// validation with the EMA weights, NaN/Inf detection, metrics (JSON lines, CSV, SVG plot), a
// progress line, and atomic checkpoints that resume bit-exactly. A step stays on the device: its
// loss, gradient norm, clipping multiplier and NaN/Inf flag live in backend memory (TrainStep's
// StepStatus; an update after a non-finite step is skipped there), and the host reads them only
// at logging steps, before validation and checkpoints, and at the end. Determinism:
// every random draw is keyed by (seed, step), and the loader position, optimizer state and EMA
// are in the checkpoint.
//
// Data-parallel (a Communicator other than SingleProcess: dist/mpi.hpp, dist/nccl.cuh): every
// rank reads its slice of every global batch (BatchSlice; --batch is the global batch), draws t,
// z_t and dropout for its sequences with the keys one process uses for them, and divides its
// loss by the global batch's token count, so the gradients summed over ranks are the one-process
// gradients; the global norm clips. Rank 0 validates and writes checkpoints, metrics and the
// progress line. With ZeRO-1 (TrainConfig::zero) each rank keeps one shard of the master weights,
// moments and EMA: a reduce-scatter of the gradients, AdamW on the shard, an all-gather of the
// parameters. Checkpoints hold the whole state and the loader position, which do not depend on
// the number of ranks, so a run resumes on any number of them. A rank that fails ends the whole
// job (Communicator::abort) with its message.

#include <chrono>
#include <cmath>
#include <concepts>
#include <exception>
#include <functional>
#include <optional>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/data/loader.hpp"
#include "mdlm/data/prepare.hpp"
#include "mdlm/data/shard.hpp"
#include "mdlm/diffusion/masked_diffusion.hpp"
#include "mdlm/diffusion/schedule_json.hpp"
#include "mdlm/dist/communicator.hpp"
#include "mdlm/dist/gradient_buckets.hpp"
#include "mdlm/io/checkpoint.hpp"
#include "mdlm/nn/dit.hpp"
#include "mdlm/nn/params.hpp"
#include "mdlm/optim/adamw.hpp"
#include "mdlm/train/metrics.hpp"
#include "mdlm/train/step_graph.hpp"

namespace mdlm {

struct TrainConfig {
  std::filesystem::path data_dir, out_dir;
  DiTConfig model;                 // vocab is taken from the data; ar from the objective type
  std::string style = "wrap";      // wrap | pad
  std::int64_t seq_len = 128, batch = 16, accum = 1, steps = 300;
  AdamWConfig adam{};
  LrSchedule lr{};
  double clip = 1.0;
  double ema = 0.9999;
  std::uint64_t seed = 0;
  std::int64_t log_every = 10, eval_every = 100, eval_batches = 16, save_every = 100;
  bool resume = false;
  std::int64_t stop_after = 0;  // stop with a checkpoint after this many steps of this run (0: never)
  bool quiet = false;
  double peak_tflops = 0;       // for MFU on the progress line (0: not shown)
  int zero = 0;                 // data-parallel optimizer sharding: 0 (none) or 1 (ZeRO-1)
  double bucket_mb = 25;        // data-parallel: MiB of final gradients per started all-reduce
  bool cuda_graph = true;       // CUDA, one process: each step after the first as a captured graph (train/step_graph.hpp)

  // Every setting in range, checked before any file is read (Trainer::run calls it); an error
  // names the field, its `mdlm train` flag and the value.
  void validate() const {
    auto require = [](bool ok, const char* field, const char* flag, auto value, const char* rule) {
      if (!ok) MDLM_FAIL("train: ", field, " (", flag, ") is ", value, ": ", rule);
    };
    require(seq_len >= 3, "seq_len", "--seq-len", seq_len, "must be at least 3 ([BOS] token [EOS])");
    require(batch > 0, "batch", "--batch", batch, "must be positive");
    require(accum > 0, "accum", "--accum", accum, "must be positive");
    require(steps > 0, "steps", "--steps", steps, "must be positive");
    require(std::isfinite(lr.peak) && lr.peak > 0, "lr.peak", "--lr", lr.peak, "must be positive");
    require(lr.warmup >= 0, "lr.warmup", "--warmup", lr.warmup, "must be >= 0");
    require(std::isfinite(adam.weight_decay) && adam.weight_decay >= 0, "adam.weight_decay", "--weight-decay",
            adam.weight_decay, "must be >= 0");
    require(std::isfinite(clip) && clip >= 0, "clip", "--clip", clip, "must be >= 0 (0: no clipping)");
    require(ema >= 0 && ema < 1, "ema", "--ema", ema, "must be in [0, 1)");
    require(log_every > 0, "log_every", "--log-every", log_every, "must be positive");
    require(eval_every >= 0, "eval_every", "--eval-every", eval_every, "must be >= 0 (0: only at the end)");
    require(eval_batches > 0, "eval_batches", "--eval-batches", eval_batches, "must be positive");
    require(save_every >= 0, "save_every", "--save-every", save_every, "must be >= 0 (0: only at the end)");
    require(stop_after >= 0, "stop_after", "--stop-after", stop_after, "must be >= 0 (0: never)");
    require(std::isfinite(bucket_mb) && bucket_mb * 1048576.0 >= 1 && bucket_mb <= 1048576.0, "bucket_mb", "--bucket-mb",
            bucket_mb, "must be at least one byte (1e-6) and at most 1 TiB (1048576)");
  }
  std::int64_t bucket_bytes() const { return static_cast<std::int64_t>(bucket_mb * 1048576.0); }

  nlohmann::json to_json() const {
    return {{"style", style}, {"seq_len", seq_len}, {"batch", batch}, {"accum", accum},
            {"steps", steps}, {"lr", lr.peak}, {"warmup", lr.warmup}, {"lr_schedule", lr.kind == LrSchedule::Kind::Cosine ? "cosine" : "constant"},
            {"beta1", adam.beta1}, {"beta2", adam.beta2}, {"adam_eps", adam.eps}, {"weight_decay", adam.weight_decay},
            {"clip", clip}, {"ema", ema}, {"seed", seed}, {"data", data_dir.string()}};
  }
};

struct EvalResult {
  double nats = 0;      // per token: NELBO (MDLM, an upper bound) or NLL (AR)
  double ppl = 0;       // exp(nats): the perplexity bound (MDLM) or perplexity (AR)
  std::int64_t tokens = 0;
};

struct TrainResult {
  std::int64_t last_step = 0;
  std::vector<double> losses;  // training loss of every step run here
  EvalResult valid;
  double unigram_nats = 0;     // cross-entropy of the validation tokens under the train unigram
  std::filesystem::path checkpoint;
  StepGraphStats graph;        // how the steps ran: captured CUDA graphs or eagerly (train/step_graph.hpp)
};

// A lower bound on the bytes a training run holds at once: weights (T) and gradients (G), the
// four fp32-or-wider optimizer buffers (S: master, EMA, two moments), and the activations the
// tape keeps for one micro-batch of batch x seq_len tokens: per block the qkv, attention output,
// both LayerNorm and residual outputs, the MLP hidden layer before and after GELU, and the
// attention probabilities (heads x seq_len per token); then the logits. The real figure is
// higher (gradients of activations, scratch), so a run refused by it cannot fit. A data-parallel
// rank holds `sequences` of each micro-batch (0: all of cfg.batch) and, under ZeRO-1, the share
// `state_share` (1/ranks) of the optimizer state.
inline double training_bytes_lower_bound(const TrainConfig& cfg, const ParamLayout& layout, std::size_t value_bytes,
                                         std::size_t grad_bytes, std::size_t state_bytes, std::int64_t sequences = 0,
                                         double state_share = 1.0) {
  const auto n = static_cast<double>(layout.buffer_elements());
  const DiTConfig& m = cfg.model;
  const double tokens = static_cast<double>(sequences > 0 ? sequences : cfg.batch) * static_cast<double>(cfg.seq_len);
  const double per_token_per_block = static_cast<double>((8 + 2 * m.mlp_ratio) * m.hidden) +
                                     static_cast<double>(m.heads) * static_cast<double>(cfg.seq_len);
  const double activations =
      tokens * static_cast<double>(value_bytes) *
      (static_cast<double>(m.blocks) * per_token_per_block + static_cast<double>(m.vocab));
  return n * (static_cast<double>(value_bytes + grad_bytes) + 4.0 * static_cast<double>(state_bytes) * state_share) + activations;
}

// Cross-entropy (nats/token) of `eval` under the add-1/2-smoothed unigram distribution of `train`.
inline double unigram_cross_entropy(const Shard& train, const Shard& eval) {
  std::vector<double> counts(static_cast<std::size_t>(train.header.vocab_size), 0.5);
  for (std::int32_t t : train.tokens) counts[static_cast<std::size_t>(t)] += 1;
  double total = 0;
  for (double c : counts) total += c;
  double h = 0;
  for (std::int32_t t : eval.tokens) h -= std::log(counts[static_cast<std::size_t>(t)] / total);
  return h / static_cast<double>(eval.tokens.size());
}

// Ids that never occur in the training tokens nor in the framing (BOS, EOS) the batches add; the
// mask id is not listed (SUBS keeps it out of every prediction). Recorded in the checkpoint:
// samplers keep these ids out of samples, since the model can only have learned that they are
// rare (e.g. the control bytes of a text corpus).
inline std::vector<std::int32_t> unseen_ids(const Shard& train, std::int64_t vocab_size, const SpecialTokens& sp) {
  std::vector<char> seen(static_cast<std::size_t>(vocab_size), 0);
  for (std::int32_t t : train.tokens) seen[static_cast<std::size_t>(t)] = 1;
  for (std::int32_t t : {sp.bos, sp.eos, sp.mask})
    if (t >= 0 && t < vocab_size) seen[static_cast<std::size_t>(t)] = 1;
  std::vector<std::int32_t> out;
  for (std::int64_t v = 0; v < vocab_size; ++v)
    if (!seen[static_cast<std::size_t>(v)]) out.push_back(static_cast<std::int32_t>(v));
  return out;
}

// What a checkpoint records about the objective: {"objective": "mdlm"|"ar"} and, for masked
// diffusion, {"schedule": {"name": ..., parameters...}} (diffusion/schedule_json.hpp).
template <Objective O>
nlohmann::json objective_record(const O& objective) {
  nlohmann::json j{{"objective", O::name()}};
  if constexpr (!O::autoregressive) j["schedule"] = schedule_record(objective.schedule());
  return j;
}

// Validation with `objective` (the one the model was trained with; its mask id set) over the
// first `batches` batches of `set` in order (0: all), with fixed draws (seed, step = batch
// index) so every evaluation sees the same t and z_t.
template <Objective O, class B, class T, class G>
EvalResult evaluate(B& ctx, const O& objective, const DiT& model, const Params<B, T, G>& p, const SequenceSet& set,
                    std::int64_t batch, std::int64_t batches, std::uint64_t seed) {
  MDLM_CHECK(model.config().ar == O::autoregressive, "evaluate: the ", O::name(), " objective needs ",
             O::autoregressive ? "the AR (causal) backbone" : "a DiT backbone, not the AR variant");
  Loader loader(set, seed, /*shuffle=*/false);
  const std::int64_t available = set.size() / batch;
  MDLM_CHECK(available > 0, "validation needs at least ", batch, " sequences, the set has ", set.size());
  const std::int64_t n = batches > 0 ? std::min(batches, available) : available;
  Tape<B, T, G> tape(ctx);
  tape.set_recording(false);
  std::vector<std::int32_t> ids;
  std::vector<double> mask;
  double sum = 0;
  std::int64_t tokens = 0;
  for (std::int64_t k = 0; k < n; ++k) {
    tape.reset();
    loader.next(batch, ids, mask);
    TokenBatch tb{ids.data(), batch, set.seq_len(), mask.data()};
    LossOutput<B, T> out = objective.loss(tape, model, p, tb, Philox{seed ^ 0x5eed5eed5eedull}, static_cast<std::uint32_t>(k));
    const double v = static_cast<double>(to_compute(download(ctx, MatrixView<const T, B>(out.loss.value))[0]));
    sum += v * static_cast<double>(out.loss_tokens);
    tokens += out.loss_tokens;
  }
  EvalResult r;
  r.tokens = tokens;
  r.nats = sum / static_cast<double>(tokens);
  r.ppl = std::exp(r.nats);
  return r;
}

// How a data-parallel job lays the optimizer state over its ranks: whole on every rank, or
// (ZeRO-1) one shard of `shard` elements per rank, rank r holding elements [r * shard,
// (r + 1) * shard) of the parameter buffer, padded with zeros to ranks * shard elements.
struct ZeroSharding {
  bool enabled = false;
  std::int64_t shard = 0;
  int ranks = 1;

  // `n` elements over `ranks` ranks; shards are whole multiples of ParamLayout::kAlign elements.
  static ZeroSharding of(std::int64_t n, int ranks, bool enabled) {
    if (!enabled) return {};
    const std::int64_t align = ParamLayout::kAlign;
    return {true, (n + ranks * align - 1) / (ranks * align) * align, ranks};
  }
  std::int64_t padded() const { return enabled ? shard * ranks : 0; }        // ParamStore capacity
  std::int64_t optimizer_elements(std::int64_t n) const { return enabled ? shard : n; }
  std::int64_t begin(int rank) const { return enabled ? shard * rank : 0; }
  // This rank's part of a whole host buffer of n elements (zeros past n).
  template <class S>
  std::vector<S> part(const std::vector<S>& whole, int rank) const {
    if (!enabled) return whole;
    std::vector<S> out(static_cast<std::size_t>(shard), S(0));
    const std::int64_t n = static_cast<std::int64_t>(whole.size()), from = begin(rank);
    for (std::int64_t i = from; i < std::min(n, from + shard); ++i) out[static_cast<std::size_t>(i - from)] = whole[static_cast<std::size_t>(i)];
    return out;
  }
};

// One optimizer step, as the trainer takes it and as a trajectory replay (io/trajectory.hpp)
// drives it from outside with recorded inputs. The trainer's path keeps the step's numbers in a
// StepStatus in backend memory (optim/step_status.hpp), so a step neither allocates nor waits
// for the device:
//   device_gradient(accum, micro_loss, step, clip): zero the gradients; for m = 0..accum-1 build
//     micro-batch m's loss on the tape (micro_loss(tape, m) returns the LossOutput), run backward
//     seeded with 1/accum (the gradients are those of the mean of the micro-batch losses) and add
//     loss / accum into the status; then the gradient's sum of squares (into preallocated
//     partial sums) and finish: the norm, the clipping multiplier, the sticky non-finite flag,
//     and the step's loss and norm appended to the history window;
//   device_apply(lr): AdamW and then the EMA (AdamW::update), reading the multiplier from the
//     status and skipped on the device once the flag is set;
//   read_status(): the host's read (a synchronization) of the status and of the losses and norms
//     of the steps since the last read, in order.
// The older interface, gradient(accum, micro_loss) returning the mean loss and the norm (the
// device path and a read) and apply(lr, norm, clip), lets a caller inspect them in between.
// Data-parallel over a Communicator `comm`: micro_loss returns this rank's share of the global
// micro-batch's loss (TokenBatch::loss_denominator); the gradients are summed over the ranks (an
// all-reduce, or with ZeRO-1 a reduce-scatter into this rank's shard, whose AdamW update is then
// all-gathered into every rank's parameters), and the losses when they are read. The all-reduce
// runs in buckets of `bucket_bytes` started during the last micro-batch's backward pass, as the
// model reports gradients final (GradientBuckets); the ZeRO-1 reduce-scatter follows the
// backward pass.
template <class B, class T, class G = float, class Comm = SingleProcess>
class TrainStep {
 public:
  using State = optimizer_state_t<T>;
  struct Gradient {
    double loss = 0;  // mean of the micro-batch losses
    double norm = 0;  // global L2 norm of the gradient, before clipping
  };
  // What read_status() returns: the status itself (this rank's), and per step since the last
  // read the loss (summed over the ranks) and the norm; bad: some rank's flag is set.
  struct StatusRead {
    StepStatus status;
    std::vector<double> loss, norm;
    bool bad = false;
  };

  TrainStep(B& ctx, ParamStore<B, T, G>& store, AdamW<B, State>& opt)
    requires std::same_as<Comm, SingleProcess>
      : TrainStep(ctx, store, opt, one_process_) {}
  // `opt` holds this rank's shard under ZeRO-1 (zero.shard elements), else the whole buffer.
  TrainStep(B& ctx, ParamStore<B, T, G>& store, AdamW<B, State>& opt, Comm& comm, ZeroSharding zero = {},
            std::int64_t bucket_bytes = kGradientBucketBytes)
      : ctx_(ctx), store_(store), opt_(opt), comm_(comm), zero_(zero), tape_(ctx),
        buckets_(comm, ctx, store.grads().data(), store.layout().buffer_elements(), bucket_bytes), status_(1) {
    tape_.on_gradients_final = buckets_.hook();
    const std::int64_t n = store.layout().buffer_elements();
    MDLM_CHECK(opt.size() == zero.optimizer_elements(n), "train step: an optimizer of ", opt.size(), " elements for ",
               zero.optimizer_elements(n));
    if (zero_.enabled) {
      MDLM_CHECK(zero.ranks == comm.size() && store.grads().numel() >= zero.padded() && store.values().numel() >= zero.padded(),
                 "train step: ZeRO-1 shards of ", zero.shard, " over ", zero.ranks, " ranks need parameter buffers of ",
                 zero.padded(), " elements on ", comm.size(), " ranks");
      grad_shard_ = Buffer<G, B>(zero.shard);
    }
    partial_ = Buffer<double, B>(sum_of_squares_partials(ctx, zero_.enabled ? zero_.shard : n));
    const StepStatus fresh{};
    upload_into(ctx_, &fresh, 1, status_.data());
    reserve_window(1);
  }

  // Room in the history window for `steps` steps between reads (the host grows it, keeping the
  // unread steps; never during a step). The trainer reserves its logging interval up front.
  void reserve_window(std::int64_t steps) {
    if (steps <= window_capacity_) return;
    const std::int64_t capacity = std::max(steps, 2 * window_capacity_);
    Buffer<double, B> grown(2 * capacity);
    if (pending_ > 0) {
      copy(ctx_, MatrixView<const double, B>(window_.data(), 1, 2 * pending_), MatrixView<double, B>(grown.data(), 1, 2 * pending_));
    }
    window_ = std::move(grown);
    window_capacity_ = capacity;
  }

  // Step `step`'s gradient and status (see above); nothing is read on the host, except under
  // ZeRO-1 (below).
  template <class MicroLoss>
  void device_gradient(std::int64_t accum, MicroLoss&& micro_loss, std::int64_t step, double clip) {
    MDLM_CHECK(accum > 0, "train step: ", accum, " micro-batches");
    reserve_window(pending_ + 1);
    buckets_.disarm();  // (a no-op unless an abandoned attempt at this step armed it)
    if (accum != seed_accum_) {
      seed_ = upload(ctx_, std::vector<T>{from_compute<T>(static_cast<compute_t<T>>(1.0 / static_cast<double>(accum)))});
      seed_accum_ = accum;
    }
    store_.zero_grad(ctx_);
    for (std::int64_t micro = 0; micro < accum; ++micro) {
      tape_.reset();
      LossOutput<B, T> out = micro_loss(tape_, micro);
      if (micro + 1 == accum && !zero_.enabled) buckets_.arm();  // its backward makes the gradients final
      tape_.backward(out.loss, MatrixView<const T, B>(seed_.data(), 1, 1));
      step_status_add_loss(ctx_, status_.data(), out.loss.value.data, accum, micro == 0);
    }
    if (zero_.enabled) {
      comm_.reduce_scatter_sum(ctx_, store_.grads().data(), grad_shard_.data(), zero_.shard);
      sum_of_squares_into(ctx_, grad_shard_.data(), zero_.shard, partial_.data(), step_status_sumsq(status_.data()));
      // ZeRO-1: the global norm needs the sum over the ranks of their shards' sums of squares,
      // and the communicators sum host values, so this path still reads the status every step.
      StepStatus st = download(ctx_, MatrixView<const StepStatus, B>(status_.data(), 1, 1))[0];
      comm_.all_reduce_host_sum(&st.sumsq, 1);
      upload_into(ctx_, &st, 1, status_.data());
    } else {
      buckets_.finish();  // the buckets not started during the backward pass, then all complete
      sum_of_squares_into(ctx_, store_.grads().data(), store_.layout().buffer_elements(), partial_.data(),
                          step_status_sumsq(status_.data()));
    }
    step_status_finish(ctx_, status_.data(), clip, step, window_.data() + 2 * pending_);
    ++pending_;
  }

  // AdamW and the EMA with the status's multiplier; nothing changes once its flag is set.
  void device_apply(double lr) {
    if (!zero_.enabled) return opt_.update(ctx_, store_.grads().data(), store_.values().data(), lr, status_.data());
    T* mine = store_.values().data() + zero_.begin(comm_.rank());
    opt_.update(ctx_, grad_shard_.data(), mine, lr, status_.data());
    comm_.all_gather(ctx_, mine, store_.values().data(), zero_.shard);
  }

  // The host's read of the status and of the window (a synchronization; data-parallel: a
  // collective, every rank reads at the same steps). The losses are summed over the ranks here,
  // and the flags OR-ed, once per read rather than once per step.
  StatusRead read_status() {
    StatusRead r;
    r.status = download(ctx_, MatrixView<const StepStatus, B>(status_.data(), 1, 1))[0];
    std::vector<double> window =
        pending_ > 0 ? download(ctx_, MatrixView<const double, B>(window_.data(), 1, 2 * pending_)) : std::vector<double>();
    std::vector<double> sums(static_cast<std::size_t>(pending_ + 1));
    for (std::int64_t i = 0; i < pending_; ++i) sums[static_cast<std::size_t>(i)] = window[static_cast<std::size_t>(2 * i)];
    sums.back() = r.status.bad != 0 ? 1.0 : 0.0;
    comm_.all_reduce_host_sum(sums.data(), static_cast<std::int64_t>(sums.size()));
    for (std::int64_t i = 0; i < pending_; ++i) {
      r.loss.push_back(sums[static_cast<std::size_t>(i)]);
      r.norm.push_back(window[static_cast<std::size_t>(2 * i + 1)]);  // equal on every rank
    }
    r.bad = sums.back() > 0;
    pending_ = 0;
    return r;
  }

  // Steps whose status the host has not read yet. set_unread() takes back steps whose stream
  // work never ran (a failed CUDA-graph capture, train/step_graph.hpp).
  std::int64_t unread() const { return pending_; }
  void set_unread(std::int64_t steps) {
    MDLM_CHECK(steps >= 0 && steps <= pending_, "train step: ", steps, " unread steps of ", pending_);
    pending_ = steps;
  }

  template <class MicroLoss>
  Gradient gradient(std::int64_t accum, MicroLoss&& micro_loss) {
    device_gradient(accum, std::forward<MicroLoss>(micro_loss), opt_.steps() + 1, 0.0);
    const StatusRead r = read_status();
    return {r.loss.back(), r.norm.back()};
  }

  void apply(double lr, double norm, double clip) {
    if (!zero_.enabled) return opt_.update(ctx_, store_.grads().data(), store_.values().data(), lr, norm, clip);
    T* mine = store_.values().data() + zero_.begin(comm_.rank());
    opt_.update(ctx_, grad_shard_.data(), mine, lr, norm, clip);
    comm_.all_gather(ctx_, mine, store_.values().data(), zero_.shard);
  }

  // One of the optimizer's buffers (opt.master(), ema(), m(), v()) whole, in ParamLayout order,
  // on the host: under ZeRO-1 gathered from every rank's shard (a collective: every rank calls it).
  std::vector<State> whole(const State* buffer) {
    const std::int64_t n = store_.layout().buffer_elements();
    if (!zero_.enabled) return download(ctx_, MatrixView<const State, B>(buffer, 1, n));
    Buffer<State, B> all(zero_.padded());
    comm_.all_gather(ctx_, buffer, all.data(), zero_.shard);
    return download(ctx_, MatrixView<const State, B>(all.data(), 1, n));
  }

  Tape<B, T, G>& tape() { return tape_; }
  // The gradient ranges whose all-reduce the last step started, in order (the last one after
  // the backward pass).
  const std::vector<std::pair<std::int64_t, std::int64_t>>& started_buckets() const { return buckets_.started(); }

 private:
  B& ctx_;
  ParamStore<B, T, G>& store_;
  AdamW<B, State>& opt_;
  SingleProcess one_process_;
  Comm& comm_;
  ZeroSharding zero_;
  Tape<B, T, G> tape_;
  GradientBuckets<Comm, B, G> buckets_;
  Buffer<T, B> seed_;
  std::int64_t seed_accum_ = 0;
  Buffer<G, B> grad_shard_;
  Buffer<StepStatus, B> status_;
  Buffer<double, B> partial_;  // the sum of squares' first-stage partial sums
  Buffer<double, B> window_;   // (loss, norm) of each step since the last read
  std::int64_t window_capacity_ = 0, pending_ = 0;
};

// Objective: MaskedDiffusion<Schedule, Subs> (any NoiseSchedule, a user's own too; its mask id
// is taken from the data) or Autoregressive. Validation uses the same objective.
template <class B, class T, class G = float, Objective Obj = MaskedDiffusion<LogLinearSchedule>>
class Trainer {
 public:
  Trainer() = default;
  explicit Trainer(Obj objective) : objective_(std::move(objective)) {}
  const Obj& objective() const { return objective_; }

  TrainResult run(B& ctx, TrainConfig cfg) {
    SingleProcess one;
    return run(ctx, std::move(cfg), one);
  }

  // Data-parallel over `comm` (every rank calls it with the same configuration). An error on any
  // rank ends the whole job through comm.abort() with that rank's message (one rank: it is thrown).
  template <Communicator<B> Comm>
  TrainResult run(B& ctx, TrainConfig cfg, Comm& comm) {
    if (comm.size() == 1) return run_ranks(ctx, std::move(cfg), comm);
    try {
      return run_ranks(ctx, std::move(cfg), comm);
    } catch (const std::exception& e) {
      comm.abort(e.what());
      throw;  // (abort does not return)
    }
  }

 private:
  template <class Comm>
  TrainResult run_ranks(B& ctx, TrainConfig cfg, Comm& comm) {
    using clock = std::chrono::steady_clock;
    cfg.validate();
    MDLM_CHECK(cfg.zero == 0 || cfg.zero == 1, "train: zero (--zero) is ", cfg.zero, ": the ZeRO stage must be 0 or 1");
    const int ranks = comm.size();
    const bool lead = comm.rank() == 0;  // rank 0 validates and writes every file
    if (!lead) cfg.quiet = true;
    const BatchSlice slice = BatchSlice::of(cfg.batch, comm.rank(), ranks);
    const DataMeta meta = DataMeta::read(cfg.data_dir);
    const Shard train = Shard::read(cfg.data_dir / "train.bin");
    const Shard valid = Shard::read(cfg.data_dir / "valid.bin");
    cfg.model.vocab = meta.vocab_size;
    cfg.model.ar = Obj::autoregressive;
    const Obj objective = objective_.with_mask_id(meta.specials.mask);
    if (cfg.model.ar) cfg.model.time_conditioning = false;
    if (ranks > 1) check_same_configuration(cfg, comm);
    if (lead) std::filesystem::create_directories(cfg.out_dir);
    const std::filesystem::path ckpt_path = cfg.out_dir / "checkpoint.safetensors";

    const BatchStyle style = parse_batch_style(cfg.style);
    SequenceSet train_set(train, style, cfg.seq_len, meta.specials), valid_set(valid, style, cfg.seq_len, meta.specials);
    Loader loader(train_set, cfg.seed);
    DiT model(cfg.model);
    const ParamLayout& layout = model.layout();
    const std::int64_t n = layout.buffer_elements();
    const ZeroSharding zero = ZeroSharding::of(n, ranks, cfg.zero == 1);
    using S = optimizer_state_t<T>;
    {  // refuse a run that cannot fit before allocating any of it (no std::bad_alloc, no OOM kill)
      const double need = training_bytes_lower_bound(cfg, layout, sizeof(T), sizeof(G), sizeof(S), slice.count,
                                                     zero.enabled ? 1.0 / ranks : 1.0);
      const double have = static_cast<double>(MemoryOps<B>::available_bytes());
      if (need > have) {
        MDLM_FAIL("train: --batch ", cfg.batch, " x --seq-len ", cfg.seq_len, " with this model needs at least ",
                  need / 1073741824.0, " GiB (weights, gradients, optimizer state and one micro-batch's activations) but ",
                  have / 1073741824.0, " GiB is available; lower --batch (raising --accum keeps the tokens per step) or --seq-len");
      }
    }
    ParamStore<B, T, G> store(layout, zero.padded());
    AdamW<B, S> opt(zero.optimizer_elements(n), cfg.adam, cfg.ema);
    const int rank = comm.rank();

    TrainResult result;
    result.unigram_nats = unigram_cross_entropy(train, valid);
    const std::vector<std::int32_t> unseen = unseen_ids(train, cfg.model.vocab, meta.specials);
    std::int64_t start = 0;
    std::vector<S> master;
    if (cfg.resume && std::filesystem::exists(ckpt_path)) {
      LoadedCheckpoint c = load_checkpoint(ckpt_path);
      if (c.model.vocab != cfg.model.vocab) {
        MDLM_FAIL("--resume: the data's vocabulary (", cfg.model.vocab, ", ", (cfg.data_dir / "meta.json").string(),
                  ") differs from the checkpoint's (", c.model.vocab, ", ", ckpt_path.string(), ")");
      }
      MDLM_CHECK(model_config_json(c.model) == model_config_json(cfg.model), ckpt_path.string(),
                 ": the checkpoint's model config ", model_config_json(c.model).dump(), " differs from this run's ",
                 model_config_json(cfg.model).dump());
      const nlohmann::json rec = objective_record(objective);
      for (const char* key : {"objective", "schedule"}) {
        MDLM_CHECK(!c.training_state.contains(key) || c.training_state.at(key) == rec.value(key, nlohmann::json()), ckpt_path.string(),
                   ": the checkpoint's ", key, " ", c.training_state.at(key).dump(), " differs from this run's ",
                   rec.value(key, nlohmann::json()).dump());
      }
      const std::string state_origin = ckpt_path.string() + ": training_state";
      start = json_field<std::int64_t>(c.training_state, "step", state_origin);
      MDLM_CHECK(start >= 0, state_origin, ": step ", start, " is negative");
      loader.set_position({json_field<std::uint64_t>(c.training_state, "loader_epoch", state_origin),
                           json_field<std::uint64_t>(c.training_state, "loader_index", state_origin)});
      master = cast_vector<S>(c.tensors.master);
      const std::vector<S> ema = zero.part(cast_vector<S>(c.tensors.ema), rank), m = zero.part(cast_vector<S>(c.tensors.m), rank),
                           v = zero.part(cast_vector<S>(c.tensors.v), rank);
      opt.load(ctx, zero.part(master, rank), ema, &m, &v);
      opt.set_steps(start);
      say(cfg, "resumed from %s at step %lld\n", ckpt_path.string().c_str(), static_cast<long long>(start));
    } else {
      MDLM_CHECK(!cfg.resume, "--resume: no checkpoint at '", ckpt_path.string(), "'");
      ParamStore<Host, float> init(layout);
      model.init(init, cfg.seed);
      master = cast_vector<S>(std::vector<float>(init.values().data(), init.values().data() + n));
      opt.load(ctx, zero.part(master, rank), zero.part(master, rank));
    }
    {
      std::vector<T> values(static_cast<std::size_t>(n));
      cast_from_master(Host{}, n, master.data(), values.data());
      upload_into(ctx, values.data(), n, store.values().data());
    }

    say(cfg, "model: %s, %lld blocks x %lld, %lld heads, vocab %lld, %s parameters; data: %s (%s), %lld train / %lld valid sequences of %lld\n",
        cfg.model.ar ? "AR" : "MDLM DiT", static_cast<long long>(cfg.model.blocks), static_cast<long long>(cfg.model.hidden),
        static_cast<long long>(cfg.model.heads), static_cast<long long>(cfg.model.vocab),
        std::to_string(layout.parameter_count()).c_str(), cfg.data_dir.string().c_str(), meta.tokenizer.c_str(),
        static_cast<long long>(train_set.size()), static_cast<long long>(valid_set.size()), static_cast<long long>(cfg.seq_len));
    say(cfg, "objective: %s\n", objective_record(objective).dump().c_str());
    say(cfg, "unigram baseline (validation tokens under the train unigram): %.4f nats/token\n", result.unigram_nats);

    if (ranks > 1) {
      say(cfg, "data-parallel: %d ranks, %lld sequences each per micro-batch of %lld%s\n", ranks,
          static_cast<long long>(slice.count), static_cast<long long>(cfg.batch),
          zero.enabled ? "; ZeRO-1: optimizer state sharded" : "");
    }

    std::optional<MetricsLog> metrics;  // rank 0's
    if (lead) metrics.emplace(cfg.out_dir, start > 0 ? start : -1);  // resumed: rows after the checkpoint are cut
    TrainStep<B, T, G, Comm> stepper(ctx, store, opt, comm, zero, cfg.bucket_bytes());
    std::vector<std::int32_t> ids;
    std::vector<double> mask;
    std::int64_t last_saved = start;
    const auto t0 = clock::now();
    auto window_start = t0;
    std::int64_t window_tokens = 0, window_steps = 0;
    double window_loss = 0;  // the logged training loss is the mean since the last log line
    const std::int64_t tokens_per_step = cfg.batch * cfg.accum * cfg.seq_len;

    auto save = [&](std::int64_t step) {  // every rank calls it (the state is gathered), rank 0 writes
      CheckpointTensors t;
      // Checkpoints hold fp32 (an fp64 state is rounded to it).
      t.master = cast_vector<float>(stepper.whole(opt.master()));
      t.ema = cast_vector<float>(stepper.whole(opt.ema()));
      t.m = cast_vector<float>(stepper.whole(opt.m()));
      t.v = cast_vector<float>(stepper.whole(opt.v()));
      last_saved = step;
      if (!lead) return;
      nlohmann::json state = cfg.to_json();
      state.update(objective_record(objective));
      const LoaderPosition pos = loader.position();
      state["step"] = step;
      state["world_size"] = ranks;  // for the record: a checkpoint resumes on any number of ranks
      state["loader_epoch"] = pos.epoch;
      state["loader_index"] = pos.index;
      state["tokenizer"] = meta.tokenizer;
      state["mask_id"] = meta.specials.mask;
      state["unseen_ids"] = unseen;
      save_checkpoint(ckpt_path, cfg.model, layout, t, state);
    };
    auto validate = [&](std::int64_t step) {  // every rank calls it (the EMA is gathered), rank 0 evaluates
      std::vector<S> ema = zero.enabled || lead ? stepper.whole(opt.ema()) : std::vector<S>();
      if (!lead) return EvalResult{};
      ParamStore<B, T, G> ema_store(layout);
      std::vector<T> values(static_cast<std::size_t>(n));
      cast_from_master(Host{}, n, ema.data(), values.data());
      upload_into(ctx, values.data(), n, ema_store.values().data());
      EvalResult r = evaluate(ctx, objective, model, ema_store.params(), valid_set, cfg.batch, cfg.eval_batches, cfg.seed + 1);
      metrics->valid(step, r.nats, r.ppl);
      say(cfg, "step %lld | validation (EMA) %s %.4f nats/token | %s %.3f | unigram %.4f\n", static_cast<long long>(step),
          cfg.model.ar ? "NLL" : "NELBO", r.nats, cfg.model.ar ? "perplexity" : "perplexity bound", r.ppl, result.unigram_nats);
      return r;
    };

    // The steps keep their loss, norm and non-finite flag in backend memory (TrainStep's
    // status); the host reads them at logging steps and before validation and checkpoints, which
    // are the only places they are needed: a step in between neither waits for the device nor
    // crosses to the host. Once a step is not finite the device skips its update and every later
    // one, and the read names that step.
    stepper.reserve_window(std::max<std::int64_t>(1, std::min(cfg.log_every, cfg.steps - start)));
    std::int64_t unread_from = start + 1;  // the first step the host has not read
    double norm = 0;                       // the last read step's gradient norm
    auto read = [&](std::int64_t step) {
      const auto r = stepper.read_status();
      for (std::size_t i = 0; i < r.loss.size(); ++i) {
        const double loss = r.loss[i], step_norm = r.norm[i];
        if (!std::isfinite(loss) || !std::isfinite(step_norm)) {
          MDLM_FAIL("non-finite ", std::isfinite(loss) ? "gradient norm" : "loss", " at step ",
                    unread_from + static_cast<std::int64_t>(i), " (loss ", loss, ", gradient norm ", step_norm,
                    "): stopped before applying the update; the last good checkpoint is '", ckpt_path.string(), "' (step ",
                    last_saved, ")");
        }
        result.losses.push_back(loss);
        window_tokens += tokens_per_step;
        window_loss += loss;
        ++window_steps;
        norm = step_norm;
      }
      // A flag without a non-finite summed loss or norm cannot happen (a rank's NaN or Inf makes
      // the sum one); kept so a skipped update can never pass unnoticed.
      if (r.bad) {
        MDLM_FAIL("non-finite loss or gradient norm at step ", r.status.bad_step, " (loss ", r.status.bad_loss,
                  ", gradient norm ", r.status.bad_norm, "): stopped before applying the update; the last good checkpoint is '",
                  ckpt_path.string(), "' (step ", last_saved, ")");
      }
      unread_from = step + 1;
    };

    // CUDA graphs need every collective on the stream: one process only, and no ZeRO-1 (whose
    // step reads the host); and at most kMaxGraphMicroBatches micro-batches (staging blocks).
    const bool graphs = cfg.cuda_graph && ranks == 1 && !zero.enabled && cfg.accum <= kMaxGraphMicroBatches;
    if (!std::is_same_v<B, Host> && cfg.cuda_graph && !graphs) {
      say(cfg, "CUDA graphs off (every step runs eagerly): %s\n",
          ranks > 1 ? "data-parallel" : zero.enabled ? "ZeRO-1" : "more than 4 micro-batches per step (--accum)");
    }
    StepGraph<B> graph(ctx, graphs);
    std::string graph_note;
    std::int64_t step = start;
    while (step < cfg.steps) {
      ++step;
      const double lr = cfg.lr.at(step);
      // The step's stream work: on CUDA (one process) captured as a graph after the first step.
      // If a capture fails, undo() puts back what the body changed on the host, and it runs again
      // eagerly (the step is taken once).
      const LoaderPosition position = loader.position();
      const std::int64_t updates = opt.steps(), unread = stepper.unread();
      graph.run(
          [&] {
            stepper.device_gradient(cfg.accum, [&](Tape<B, T, G>& tape, std::int64_t micro) {
              const auto draw = static_cast<std::uint32_t>(step * cfg.accum + micro);
              tape.options = {true, cfg.seed, draw, slice.first, slice.global};
              loader.next_slice(cfg.batch, slice.first, slice.count, ids, mask);
              TokenBatch tb{ids.data(), slice.count, cfg.seq_len, mask.data(), slice.first, slice.global};
              if (ranks > 1) {  // this rank's loss is its share of the global micro-batch's token mean
                tb.loss_denominator = Obj::loss_denominator(tb);
                comm.all_reduce_host_sum(&tb.loss_denominator, 1);
              }
              return objective.loss(tape, model, store.params(), tb, Philox{cfg.seed}, draw);
            }, step, cfg.clip);
            stepper.device_apply(lr);
          },
          [&] { stepper.tape().reset(); },  // a grown arena merges its blocks here, not inside a capture
          [&] {
            loader.set_position(position);
            opt.set_steps(updates);
            stepper.set_unread(unread);
          });
      if (graph.stats().note != graph_note) {  // a capture failed: say why, once per reason
        graph_note = graph.stats().note;
        say(cfg, "step %lld: %s\n", static_cast<long long>(step), graph_note.c_str());
      }
      const bool logging = step % cfg.log_every == 0 || step == cfg.steps;
      const bool evaluating = cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < cfg.steps;
      const bool stopping = cfg.stop_after > 0 && step - start >= cfg.stop_after;
      const bool saving = (cfg.save_every > 0 && step % cfg.save_every == 0) || stopping;
      if (logging || evaluating || saving) read(step);  // every rank reads at the same steps
      if (logging) {
        const auto now = clock::now();
        const double dt = std::chrono::duration<double>(now - window_start).count();
        const double tps = dt > 0 ? static_cast<double>(window_tokens) / dt : 0.0;
        const double elapsed = std::chrono::duration<double>(now - t0).count();
        const double eta = elapsed / static_cast<double>(step - start) * static_cast<double>(cfg.steps - step);
        const double mean_loss = window_loss / static_cast<double>(window_steps);
        if (lead) metrics->train(step, mean_loss, lr, norm, tps);
        std::string mfu;
        if (cfg.peak_tflops > 0) {
          char b[48];
          std::snprintf(b, sizeof b, " | MFU %.1f%%", 100.0 * tps * model.train_flops_per_token(cfg.seq_len) / (cfg.peak_tflops * 1e12));
          mfu = b;
        }
        std::string per_rank;  // tokens/s of the whole job, and of each rank when there are several
        if (ranks > 1) {
          char b[64];
          std::snprintf(b, sizeof b, " (%.0f per rank x %d)", tps / ranks, ranks);
          per_rank = b;
        }
        say(cfg, "step %lld/%lld | loss %.4f | lr %.2e | grad %.3f | %.0f tok/s%s%s | ETA %s\n", static_cast<long long>(step),
            static_cast<long long>(cfg.steps), mean_loss, lr, norm, tps, per_rank.c_str(), mfu.c_str(), format_duration(eta).c_str());
        window_start = now;
        window_tokens = 0;
        window_steps = 0;
        window_loss = 0;
      }
      if (evaluating) validate(step);
      if (saving) save(step);
      if (stopping) {
        say(cfg, "stopping after %lld steps (checkpoint at step %lld)\n", static_cast<long long>(step - start), static_cast<long long>(step));
        if (lead) metrics->write_plot(cfg.model.ar ? "AR training" : "MDLM training");
        result.last_step = step;
        result.checkpoint = ckpt_path;
        result.graph = graph.stats();
        return result;
      }
    }
    read(step);  // (nothing is left unread after the last step, which logs; a resumed finished run has nothing)
    result.valid = validate(step);
    save(step);
    if (lead) metrics->write_plot(cfg.model.ar ? "AR training" : "MDLM training");
    result.last_step = step;
    result.checkpoint = ckpt_path;
    result.graph = graph.stats();
    say(cfg, "done: %lld steps; checkpoint %s; metrics %s\n", static_cast<long long>(step), ckpt_path.string().c_str(),
        (cfg.out_dir / "metrics.jsonl").string().c_str());
    return result;
  }

  Obj objective_{};

  // Every rank must train the same configuration (one with other flags would wait in collectives
  // of other sizes, or train another model): a 20-bit hash of it (the data directory aside: the
  // ranks of several machines may read it from different paths) is equal on every rank iff
  // N * sum(h^2) == sum(h)^2, exact in doubles.
  template <class Comm>
  static void check_same_configuration(const TrainConfig& cfg, Comm& comm) {
    nlohmann::json c = cfg.to_json();
    c.erase("data");
    c["model"] = model_config_json(cfg.model);
    c["zero"] = cfg.zero;
    c["bucket_mb"] = cfg.bucket_mb;  // the ranks' collectives must match one to one
    c["resume"] = cfg.resume;
    c["stop_after"] = cfg.stop_after;
    c["objective"] = Obj::name();
    const double h = static_cast<double>(std::hash<std::string>{}(c.dump()) & 0xFFFFFu);
    double sums[2] = {h, h * h};
    comm.all_reduce_host_sum(sums, 2);
    MDLM_CHECK(sums[0] * sums[0] == static_cast<double>(comm.size()) * sums[1],
               "the ranks were started with different training configurations (every rank needs the same flags); this "
               "rank's: ", c.dump());
  }

  template <class... A>
  static void say(const TrainConfig& cfg, const char* fmt, A... a) {
    if (cfg.quiet) return;
    std::printf(fmt, a...);
    std::fflush(stdout);
  }
};

}  // namespace mdlm
