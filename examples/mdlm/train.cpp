// mdlm train: trains an MDLM (or the AR baseline) on prepared data, with checkpoints,
// metrics and validation. The names typed here (objective, schedule, backend) become types
// once, in run_train.
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "cli.hpp"
#if MDLM_WITH_MPI
#include "mdlm/dist/mpi.hpp"  // `mpirun -np N mdlm train ...`: data-parallel over N ranks
#endif
#if MDLM_WITH_NCCL
#include "mdlm/dist/nccl.cuh"  // ... and over N GPUs with --backend cuda
#endif

namespace mdlm::cli {
namespace {

CommandSpec train_spec() {
  return {"",
          {{"--data", "out/kjv-bytes", "prepared data directory (mdlm prepare)"},
           {"--out", "out/run", "output directory: checkpoint.safetensors, metrics.jsonl/csv, loss.svg"},
           {"--preset", "", "model preset tiny|small|medium (empty: use --hidden/--blocks/--heads/--cond-dim)"},
           {"--hidden", "128", "model width d"},
           {"--blocks", "4", "transformer blocks"},
           {"--heads", "4", "attention heads"},
           {"--cond-dim", "64", "width of the time conditioning"},
           {"--seq-len", "128", "tokens per sequence"},
           {"--batch", "16", "sequences per micro-batch (of the whole job: mpirun ranks each take a slice)"},
           {"--accum", "1", "micro-batches per optimizer step (gradient accumulation)"},
           {"--steps", "300", "optimizer steps of the whole run"},
           {"--lr", "1e-3", "peak learning rate (AdamW)"},
           {"--warmup", "50", "linear learning-rate warmup steps"},
           {"--lr-schedule", "constant", "constant or cosine after the warmup"},
           {"--weight-decay", "0", "AdamW weight decay"},
           {"--clip", "1.0", "global gradient-norm clipping threshold"},
           {"--ema", "0.9999", "EMA decay of the weights used for validation"},
           {"--seed", "0", "seed of every random draw"},
           {"--backend", "", "host or cuda (empty: cuda where a GPU is present, else host)"},
           {"--objective", "mdlm", "mdlm (masked diffusion) or ar (the autoregressive baseline)"},
           {"--style", "wrap", "wrap (concatenate, cut, frame with BOS/EOS) or pad (a document per row, padded)"},
           {"--dropout", "0.1", "dropout on the residual branches"},
           {"--log-every", "10", "steps between progress lines"},
           {"--eval-every", "100", "steps between validations with the EMA weights (0: only at the end)"},
           {"--eval-batches", "16", "validation batches (0: the whole split)"},
           {"--save-every", "100", "steps between checkpoints (0: only at the end)"},
           {"--stop-after", "0", "stop with a checkpoint after this many steps of this run (0: never)"},
           {"--schedule", "loglinear", "noise schedule: loglinear, cosine, linear, geometric or polynomial (recorded in the checkpoint)"},
           {"--schedule-eps", "", "eps of loglinear, cosine and polynomial (empty: 1e-3)"},
           {"--sigma-min", "", "sigma_min of linear and geometric (empty: 0 and 1e-3)"},
           {"--sigma-max", "", "sigma_max of linear and geometric (empty: 10 and 1)"},
           {"--schedule-w", "", "exponent w of polynomial (empty: 1)"},
           {"--resume", "", "continue from OUT/checkpoint.safetensors (same config and schedule)", true},
           {"--time-conditioning", "", "feed sigma(t) to the model (off: a time-agnostic denoiser)", true},
           {"--dtype", "", "f32 or f64 on the Host, bf16 on CUDA (empty: f32 on the Host, bf16 on CUDA)"},
           {"--zero", "0", "data-parallel (mpirun): 1 shards the AdamW moments, master weights and EMA over the ranks (ZeRO-1)"},
           {"--bucket-mb", "25", "data-parallel (mpirun): MiB of final gradients per all-reduce started during the backward pass"},
           {"--no-cuda-graph", "", "cuda: run every step eagerly instead of as a captured CUDA graph", true}}};
}

// Trains with the objective type `obj` on the chosen backend, data-parallel over the ranks of
// mpirun/srun where built with MPI (one rank otherwise).
template <class Obj>
TrainResult run_trainer(const CommandLine& cl, const std::string& backend, const std::string& dtype, TrainConfig& cfg,
                        const Obj& obj) {
  if (backend == "host") {
    MDLM_CHECK(dtype == "f32" || dtype == "f64", "--dtype ", dtype, ": the Host trains f32 or f64");
    Host host = cl.host();
#if MDLM_WITH_MPI
    MpiCommunicator ranks;
#else
    SingleProcess ranks;
#endif
    return dtype == "f64" ? Trainer<Host, double, double, Obj>{obj}.run(host, cfg, ranks)
                          : Trainer<Host, float, float, Obj>{obj}.run(host, cfg, ranks);
  }
  MDLM_CHECK(dtype == "bf16", "--dtype ", dtype, ": the CUDA backend trains bf16 (mixed precision)");
#if MDLM_WITH_CUDA
  MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
  cfg.peak_tflops = 989.4;
#if MDLM_WITH_NCCL
  MpiCommunicator mpi;
  Cuda ctx(NcclCommunicator::device_for(mpi));
  NcclCommunicator ranks(mpi, ctx);
  return Trainer<Cuda, bf16, float, Obj>{obj}.run(ctx, cfg, ranks);
#else
#if MDLM_WITH_MPI
  MDLM_CHECK(MpiCommunicator().size() == 1, "--backend cuda on several ranks: this mdlm was built without NCCL");
#endif
  Cuda ctx;
  return Trainer<Cuda, bf16, float, Obj>{obj}.run(ctx, cfg);
#endif
#else
  MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
}

// --schedule NAME and its parameters (--schedule-eps, --sigma-min, --sigma-max, --schedule-w)
// as a record; a parameter the schedule does not have, or a value out of range, is an error
// naming the flag.
nlohmann::json schedule_from_flags(const Args& args, bool ar) {
  const std::string name = args.str("--schedule");
  const std::map<std::string, std::vector<std::string>> params = {
      {"loglinear", {"--schedule-eps"}}, {"cosine", {"--schedule-eps"}}, {"linear", {"--sigma-min", "--sigma-max"}},
      {"geometric", {"--sigma-min", "--sigma-max"}}, {"polynomial", {"--schedule-w", "--schedule-eps"}}};
  MDLM_CHECK(params.count(name) == 1, "--schedule: unknown schedule '", name,
             "' (expected loglinear, cosine, linear, geometric or polynomial)");
  for (const char* f : {"--schedule", "--schedule-eps", "--sigma-min", "--sigma-max", "--schedule-w"}) {
    MDLM_CHECK(!ar || !args.was_given(f), "flag '", f, "' applies to --objective mdlm only");
  }
  // The flag -> JSON key of each parameter; absent flags keep the schedule's defaults.
  const std::map<std::string, std::string> key = {
      {"--schedule-eps", "eps"}, {"--sigma-min", "sigma_min"}, {"--sigma-max", "sigma_max"}, {"--schedule-w", "w"}};
  nlohmann::json rec{{"name", name}};
  for (const auto& [flag, k] : key) {
    if (args.str(flag).empty()) continue;
    const auto& own = params.at(name);
    MDLM_CHECK(std::find(own.begin(), own.end(), flag) != own.end(), "flag '", flag, "' does not apply to --schedule ", name,
               " (its parameters: ", [&] {
                 std::string l;
                 for (const auto& o : own) l += (l.empty() ? "" : ", ") + o;
                 return l;
               }(), ")");
    const double v = args.real(flag);
    MDLM_CHECK(std::isfinite(v), "flag '", flag, "' expects a finite number, got '", args.str(flag), "'");
    rec[k] = v;
  }
  // The resulting schedule's parameters must give a valid process.
  with_schedule(rec, [&](auto sched) {
    using S = decltype(sched);
    if constexpr (std::is_same_v<S, LinearSchedule> || std::is_same_v<S, GeometricSchedule>) {
      MDLM_CHECK(sched.sigma_max > sched.sigma_min, "--sigma-max ", sched.sigma_max, " must exceed --sigma-min ", sched.sigma_min);
      MDLM_CHECK(sched.sigma_min >= 0, "--sigma-min ", sched.sigma_min, " must be >= 0");
      if constexpr (std::is_same_v<S, GeometricSchedule>) MDLM_CHECK(sched.sigma_min > 0, "--sigma-min must be > 0 for --schedule geometric");
    } else {
      MDLM_CHECK(sched.eps >= 0 && sched.eps < 1, "--schedule-eps ", sched.eps, " must be in [0, 1)");
      if constexpr (std::is_same_v<S, PolynomialSchedule>) MDLM_CHECK(sched.w > 0, "--schedule-w ", sched.w, " must be > 0");
    }
    return 0;
  });
  return with_schedule(rec, [](auto sched) { return schedule_record(sched); });  // every parameter, defaults too
}

int run_train(const CommandLine& cl) {
  const Args args = cl.flags(train_spec());
  TrainConfig cfg;
  cfg.data_dir = args.str("--data");
  cfg.out_dir = args.str("--out");
  if (!args.str("--preset").empty()) {
    cfg.model = DiTConfig::preset(args.str("--preset"), 1);
  } else {
    cfg.model.hidden = args.integer("--hidden");
    cfg.model.blocks = args.integer("--blocks");
    cfg.model.heads = args.integer("--heads");
    cfg.model.cond_dim = args.integer("--cond-dim");
  }
  cfg.model.dropout = static_cast<float>(args.real("--dropout"));
  cfg.model.time_conditioning = args.integer("--time-conditioning") != 0;
  const std::string objective = args.str("--objective");
  MDLM_CHECK(objective == "mdlm" || objective == "ar", "--objective: unknown objective '", objective, "' (expected mdlm or ar)");
  cfg.style = args.str("--style");
  cfg.seq_len = args.integer("--seq-len");
  cfg.batch = args.integer("--batch");
  cfg.accum = args.integer("--accum");
  cfg.steps = args.integer("--steps");
  cfg.lr.peak = args.real("--lr");
  cfg.adam.lr = cfg.lr.peak;
  cfg.lr.warmup = args.integer("--warmup");
  cfg.lr.kind = LrSchedule::parse(args.str("--lr-schedule"));
  cfg.lr.total = cfg.steps;
  cfg.adam.weight_decay = args.real("--weight-decay");
  cfg.clip = args.real("--clip");
  cfg.ema = args.real("--ema");
  cfg.seed = static_cast<std::uint64_t>(args.integer("--seed"));
  cfg.log_every = args.integer("--log-every");
  cfg.eval_every = args.integer("--eval-every");
  cfg.eval_batches = args.integer("--eval-batches");
  cfg.save_every = args.integer("--save-every");
  cfg.stop_after = args.integer("--stop-after");
  cfg.resume = args.integer("--resume") != 0;
  const std::string backend = args.str("--backend").empty() ? default_backend() : args.str("--backend");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  const std::string dtype = !args.str("--dtype").empty() ? args.str("--dtype") : backend == "host" ? "f32" : "bf16";
  cfg.zero = static_cast<int>(args.integer("--zero"));
  cfg.bucket_mb = args.real("--bucket-mb");
  cfg.cuda_graph = args.integer("--no-cuda-graph") == 0;
  // The names become types here, once: the objective (and, for mdlm, the schedule).
  const nlohmann::json schedule = schedule_from_flags(args, objective == "ar");
  const TrainResult r = objective == "ar" ? run_trainer(cl, backend, dtype, cfg, Autoregressive{})
                                          : with_schedule(schedule, [&](auto sched) {
                                              return run_trainer(cl, backend, dtype, cfg, MaskedDiffusion<decltype(sched)>{sched});
                                            });
  if (r.valid.tokens > 0) {
    std::printf("final validation: %.4f nats/token, %s %.3f (unigram baseline %.4f nats/token)\n", r.valid.nats,
                objective == "ar" ? "perplexity" : "perplexity bound", r.valid.ppl, r.unigram_nats);
  }
  return 0;
}

}  // namespace

Command train_command() { return {"train", {train_spec()}, run_train}; }

}  // namespace mdlm::cli
