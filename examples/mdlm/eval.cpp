// mdlm eval: the validation perplexity bound of an MDLM checkpoint (with the schedule it was
// trained with) or the perplexity of an AR one, on the Host or the GPU; with --gen-ppl, the
// generative perplexity of samples (sample.cpp).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli.hpp"

namespace mdlm::cli {
namespace {

CommandSpec eval_spec() {
  return {"",
          {{"--checkpoint", "out/run", "checkpoint directory or file, or a Hugging Face MDLM directory (with --gen-ppl: the MDLM one that samples)"},
           {"--data", "", "data directory (empty: the one recorded in the checkpoint)"},
           {"--split", "valid", "valid or train"},
           {"--batches", "0", "batches to evaluate (0: the whole split)"},
           {"--batch", "16", "sequences per batch"},
           {"--ema", "1", "1: the EMA weights, 0: the raw weights"},
           {"--backend", "host", "host or cuda (cuda: the network on the GPU, --dtype f32 or bf16)"},
           {"--dtype", "f32", "network precision with --backend cuda: f32 or bf16"}}};
}

// `eval --gen-ppl`: the sampler's flags (no --json) and the AR checkpoint that scores the samples.
CommandSpec gen_ppl_spec() {
  CommandSpec s = sample_spec();
  std::erase_if(s.flags, [](const Flag& f) { return f.name == "--json"; });
  for (Flag& f : s.flags) {
    if (f.name == "--checkpoint") f.meaning = "checkpoint directory or file (with --gen-ppl: the MDLM one that samples)";
  }
  s.flags.push_back({"--scorer", "", "AR checkpoint that scores the samples (with --gen-ppl)"});
  s.flags.push_back({"--gen-ppl", "", "generative perplexity: score samples with the AR checkpoint --scorer (takes sample's flags)", true});
  return s;
}

bool wants_gen_ppl(const CommandLine& cl) {
  return std::any_of(cl.argv + 2, cl.argv + cl.argc, [](const char* a) { return std::string(a) == "--gen-ppl"; });
}

int run_eval(const CommandLine& cl) {
  const Args args = cl.flags(eval_spec());
  const std::string backend = args.str("--backend"), dtype = args.str("--dtype");
  MDLM_CHECK(backend == "host" || backend == "cuda", "--backend: unknown backend '", backend, "' (expected host or cuda)");
  MDLM_CHECK(dtype == "f32" || dtype == "bf16", "--dtype: unknown dtype '", dtype, "' (expected f32 or bf16)");
  MDLM_CHECK(backend == "cuda" || dtype == "f32", "--dtype ", dtype, " needs --backend cuda (the Host evaluates in f32)");
  const std::filesystem::path given = args.str("--checkpoint");
  const std::filesystem::path path = is_hf_model_dir(given) ? given : checkpoint_file(given);
  const LoadedCheckpoint c = read_checkpoint(path);
  const std::filesystem::path data = args.str("--data").empty() ? std::filesystem::path(c.training_state.value("data", std::string()))
                                                                  : std::filesystem::path(args.str("--data"));
  MDLM_CHECK(!data.empty(), "--data: ", path.string(), " records no data directory (a Hugging Face model); give --data DIR");
  const DataMeta meta = DataMeta::read(data);
  MDLM_CHECK(meta.vocab_size == c.model.vocab, "the data's vocabulary (", meta.vocab_size, ") differs from the checkpoint's (",
             c.model.vocab, ")");
  const Shard shard = Shard::read(data / (args.str("--split") + ".bin"));
  const std::int64_t seq_len = c.training_state.value("seq_len", std::int64_t{128});
  SequenceSet set(shard, parse_batch_style(c.training_state.value("style", std::string("wrap"))), seq_len, meta.specials);
  const CheckpointWeights weights = args.integer("--ema") != 0 ? CheckpointWeights::Ema : CheckpointWeights::Raw;
  const std::int64_t batch = args.integer("--batch"), batches = args.integer("--batches");
  const std::uint64_t seed = c.training_state.value("seed", std::uint64_t{0}) + 1;
  // MDLM: the schedule the checkpoint was trained with.
  const nlohmann::json schedule = c.model.ar ? nlohmann::json() : schedule_of(c.training_state);
  // The network as T on the backend (Host f32; CUDA f32 or bf16: values rounded, compute in fp32).
  const EvalResult r = on_backend_and_dtype<EvalResult>(cl, backend, dtype, [&]<class B, class T, class G>(B& ctx) {
    TrainedModel<B, T> m = to_backend<T>(ctx, c, weights);
    const auto params = m.store.params();
    if (c.model.ar) return evaluate(ctx, Autoregressive{}, m.model, params, set, batch, batches, seed);
    return with_schedule(schedule, [&](auto sched) {
      return evaluate(ctx, MaskedDiffusion<decltype(sched)>{sched}.with_mask_id(meta.specials.mask), m.model, params, set,
                      batch, batches, seed);
    });
  });
  const std::string device = backend == "host" ? "" : "\"backend\": \"cuda\", \"dtype\": \"" + dtype + "\", ";
  std::printf("{\"checkpoint\": \"%s\", \"split\": \"%s\", \"objective\": \"%s\", %s%s\"tokens\": %lld, \"nats_per_token\": %.6f, \"%s\": %.6f}\n",
              path.string().c_str(), args.str("--split").c_str(), c.model.ar ? "ar" : "mdlm", device.c_str(),
              c.model.ar ? "" : ("\"schedule\": " + schedule.dump() + ", ").c_str(), static_cast<long long>(r.tokens), r.nats,
              c.model.ar ? "perplexity" : "perplexity_bound", r.ppl);
  return 0;
}

}  // namespace

Command eval_command() {
  return {"eval", {eval_spec(), gen_ppl_spec()}, [](const CommandLine& cl) { return wants_gen_ppl(cl) ? gen_ppl(cl, gen_ppl_spec()) : run_eval(cl); }};
}

}  // namespace mdlm::cli
