#pragma once
// The MDLM DiT backbone (DESIGN §1) and its AR variant, built from small modules that own no
// memory: each holds the indices of its parameters in a ParamLayout and runs ops on a tape.
//
//   x = vocab_embed(ids)                                         (B*T, d)
//   c = SiLU(sigma_map(sinusoidal(sigma)))                       (B, cond)     [DiT only]
//   per block: shift1, scale1, gate1, shift2, scale2, gate2 = adaLN_modulation(c)   (B, d) each
//     x = x + gate1 * drop(attn_out(attention(rope(attn_qkv(LN1(x) * (1 + scale1) + shift1)))))
//     x = x + gate2 * drop(mlp.2(gelu(mlp.0(LN2(x) * (1 + scale2) + shift2))))
//   shift, scale = output_layer.adaLN_modulation(c)
//   logits = output_layer.linear(norm_final(x) * (1 + scale) + shift)            (B*T, V)
//     (rows padded to an aligned stride on CUDA: kHeadLdMultiple)
// The AR variant drops adaLN, sigma_map and gates, and attends causally.
// Time conditioning is off by default: sigma is fed as 0 and the denoiser is time-agnostic.

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/nn/params.hpp"
#include "mdlm/ops/activation.hpp"
#include "mdlm/ops/attention.hpp"
#include "mdlm/ops/flash_attention.hpp"
#include "mdlm/ops/embedding.hpp"
#include "mdlm/ops/layernorm.hpp"
#include "mdlm/ops/linear.hpp"
#include "mdlm/ops/residual.hpp"
#include "mdlm/ops/residual_layernorm.hpp"
#include "mdlm/ops/rope.hpp"
#include "mdlm/ops/timestep.hpp"

namespace mdlm {

struct DiTConfig {
  std::int64_t vocab = 50258;
  std::int64_t hidden = 768;
  std::int64_t heads = 12;
  std::int64_t blocks = 12;
  std::int64_t cond_dim = 128;
  std::int64_t mlp_ratio = 4;
  std::int64_t freq_dim = 256;      // sinusoidal embedding size
  bool time_conditioning = false;   // off: sigma is fed as 0
  bool ar = false;                  // the AR baseline: no adaLN, no time input, causal
  double layer_norm_eps = 1e-5;
  double rope_base = 10000.0;
  float dropout = 0.1f;
  // Memory layout, not the model: the output head's logits rows are `vocab` rounded up to a
  // multiple of this apart (DiT::head_ld). 0: the backend's default, kHeadLdMultiple<B> (128 on
  // CUDA, 1 on the Host). No op reads the pad, so the Host's results are bit-identical for every
  // value (tests/host); cuBLASLt may pick another kernel for another stride. Not in checkpoints.
  std::int64_t head_ld_multiple = 0;

  // Presets: tiny (8 blocks x 512 x 8 heads), small (12 x 768 x 12), medium (24 x 1024 x 16).
  static DiTConfig preset(const std::string& name, std::int64_t vocab) {
    DiTConfig c;
    c.vocab = vocab;
    if (name == "tiny") c.blocks = 8, c.hidden = 512, c.heads = 8;
    else if (name == "small") c.blocks = 12, c.hidden = 768, c.heads = 12;
    else if (name == "medium") c.blocks = 24, c.hidden = 1024, c.heads = 16;
    else MDLM_FAIL("unknown preset '", name, "' (expected tiny, small or medium)");
    return c;
  }

  std::int64_t head_dim() const { return hidden / heads; }
  void validate() const {
    MDLM_CHECK(vocab > 0 && hidden > 0 && heads > 0 && blocks >= 0 && cond_dim > 0 && mlp_ratio > 0,
               "invalid DiT sizes: vocab ", vocab, ", hidden ", hidden, ", heads ", heads, ", blocks ", blocks,
               ", cond_dim ", cond_dim);
    MDLM_CHECK(hidden % heads == 0, "hidden size ", hidden, " is not divisible by ", heads, " heads");
    MDLM_CHECK(head_dim() % 2 == 0, "head dimension ", head_dim(), " must be even for rotary embeddings");
    MDLM_CHECK(dropout >= 0.0f && dropout < 1.0f, "dropout ", dropout, " must be in [0, 1)");
    MDLM_CHECK(head_ld_multiple >= 0 && head_ld_multiple <= 4096, "head_ld_multiple ", head_ld_multiple,
               " must be in [0, 4096] (0: the backend's default)");
    MDLM_CHECK(freq_dim > 0 && freq_dim % 2 == 0 && layer_norm_eps > 0 && rope_base > 0, "invalid DiT settings: freq_dim ", freq_dim,
               ", layer_norm_eps ", layer_norm_eps, ", rope_base ", rope_base, " (all must be positive; freq_dim even)");
    // Bounds far above any real model that keep every parameter count (vocab x hidden,
    // mlp_ratio x hidden x hidden, ...) well inside int64.
    constexpr std::int64_t kMaxDim = std::int64_t{1} << 20;
    MDLM_CHECK(vocab <= (std::int64_t{1} << 31) && hidden <= kMaxDim && cond_dim <= kMaxDim && freq_dim <= kMaxDim &&
                   mlp_ratio <= 64 && blocks <= 4096,
               "DiT sizes out of range: vocab ", vocab, " (at most 2^31), hidden ", hidden, ", cond_dim ", cond_dim,
               ", freq_dim ", freq_dim, " (at most 2^20), mlp_ratio ", mlp_ratio, " (at most 64), blocks ", blocks,
               " (at most 4096)");
  }
};

// The default row stride multiple of the output head's logits (DiTConfig::head_ld_multiple = 0).
// CUDA pads to 128 elements: a bf16 row of V = 50258 logits is 100516 bytes, not a multiple of
// 16, which keeps cuBLASLt off its TMA / 16-byte-vector kernels; the head's GEMM at that width
// ran at 252 TFLOP/s on an H100 against 620-760 for aligned widths. The Host's BLAS has no such
// cliff, and compact rows keep its buffers what they always were.
template <class B>
inline constexpr std::int64_t kHeadLdMultiple = std::is_same_v<B, Host> ? 1 : 128;

// ---- modules -----------------------------------------------------------------------------

template <class B, class T, class G>
using Params = std::vector<Param<T, G, B>>;

struct Linear {
  int w = -1, b = -1;
  static Linear make(ParamLayout& l, const std::string& name, std::int64_t in, std::int64_t out, bool bias) {
    Linear m;
    m.w = l.add(name + ".weight", {out, in});
    if (bias) m.b = l.add(name + ".bias", {out});
    return m;
  }
  // out_ld_multiple: the output's row stride is `out` rounded up to a multiple of it (LinearOp).
  template <class B, class T, class G>
  Var<T, B> forward(Tape<B, T, G>& tape, const Params<B, T, G>& p, Var<T, B> x, bool gelu = false,
                    std::int64_t out_ld_multiple = 1) const {
    return LinearOp<B, T, G>::forward(tape, x, p[static_cast<std::size_t>(w)],
                                      b >= 0 ? p[static_cast<std::size_t>(b)] : Param<T, G, B>{}, gelu, out_ld_multiple);
  }
};

struct LayerNorm {
  int w = -1;
  static LayerNorm make(ParamLayout& l, const std::string& name, std::int64_t dim) { return {l.add(name + ".weight", {dim})}; }
  template <class B, class T, class G>
  Var<T, B> forward(Tape<B, T, G>& tape, const Params<B, T, G>& p, Var<T, B> x, Var<T, B> shift, Var<T, B> scale,
                    std::int64_t seq_len, double eps) const {
    return LayerNormModulateOp<B, T, G>::forward(tape, x, p[static_cast<std::size_t>(w)], shift, scale, seq_len, eps);
  }
  // x + gate * drop(y) and this norm of it, in one op (ResidualLayerNormOp): {residual, norm}.
  template <class B, class T, class G>
  typename ResidualLayerNormOp<B, T, G>::Out forward_residual(Tape<B, T, G>& tape, const Params<B, T, G>& p, Var<T, B> x,
                                                              Var<T, B> y, Var<T, B> gate, float dropout,
                                                              Var<T, B> shift, Var<T, B> scale, std::int64_t seq_len,
                                                              double eps) const {
    return ResidualLayerNormOp<B, T, G>::forward(tape, x, y, gate, seq_len, dropout, p[static_cast<std::size_t>(w)],
                                                 shift, scale, eps);
  }
};

struct Embedding {
  int table = -1;
  static Embedding make(ParamLayout& l, const std::string& name, std::int64_t vocab, std::int64_t dim) {
    return {l.add(name + ".embedding", {vocab, dim})};
  }
};

struct TimestepEmbedder {  // sinusoidal(sigma) -> Linear -> SiLU -> Linear
  Linear l0, l2;
  static TimestepEmbedder make(ParamLayout& l, const std::string& name, std::int64_t freq_dim, std::int64_t cond) {
    return {Linear::make(l, name + ".mlp.0", freq_dim, cond, true), Linear::make(l, name + ".mlp.2", cond, cond, true)};
  }
};

struct Attention {
  Linear qkv, out;
};

struct Mlp {
  Linear fc, proj;  // mlp.0 (d -> r d, GELU), mlp.2 (r d -> d)
};

struct DiTBlock {
  LayerNorm norm1, norm2;
  Attention attn;
  Mlp mlp;
  Linear ada_ln;  // absent (w < 0) in the AR variant
};

struct FinalLayer {
  LayerNorm norm_final;
  Linear linear;
  Linear ada_ln;
};

// Inputs of one forward pass. Token ids in backend memory plus their host copy (validation;
// nullptr when a device-side sampler produced them); sigma (B) in host memory, read only with
// time conditioning on. A device-resident loop (CUDA graphs) sets resident_sigma and gives
// sigma_device (B floats in backend memory, nullptr: sigma = 0) so nothing crosses to the host.
struct DiTInputs {
  const std::int32_t* ids = nullptr;
  const std::int32_t* host_ids = nullptr;
  std::int64_t batch = 0;
  std::int64_t seq_len = 0;
  const double* sigma = nullptr;
  bool resident_sigma = false;
  const float* sigma_device = nullptr;
};

class DiT {
 public:
  explicit DiT(const DiTConfig& cfg) : cfg_(cfg) {
    cfg_.validate();
    const std::int64_t d = cfg_.hidden;
    embed_ = Embedding::make(layout_, "vocab_embed", cfg_.vocab, d);
    if (!cfg_.ar) sigma_map_ = TimestepEmbedder::make(layout_, "sigma_map", cfg_.freq_dim, cfg_.cond_dim);
    for (std::int64_t i = 0; i < cfg_.blocks; ++i) {
      block_begin_.push_back(layout_.buffer_elements());
      block_names_.push_back("block " + std::to_string(i));
      const std::string p = "blocks." + std::to_string(i);
      DiTBlock blk;
      blk.norm1 = LayerNorm::make(layout_, p + ".norm1", d);
      blk.attn.qkv = Linear::make(layout_, p + ".attn_qkv", d, 3 * d, false);
      blk.attn.out = Linear::make(layout_, p + ".attn_out", d, d, false);
      blk.norm2 = LayerNorm::make(layout_, p + ".norm2", d);
      blk.mlp.fc = Linear::make(layout_, p + ".mlp.0", d, cfg_.mlp_ratio * d, true);
      blk.mlp.proj = Linear::make(layout_, p + ".mlp.2", cfg_.mlp_ratio * d, d, true);
      if (!cfg_.ar) blk.ada_ln = Linear::make(layout_, p + ".adaLN_modulation", cfg_.cond_dim, 6 * d, true);
      blocks_.push_back(blk);
    }
    block_begin_.push_back(layout_.buffer_elements());  // the output layer's parameters follow
    final_.norm_final = LayerNorm::make(layout_, "output_layer.norm_final", d);
    final_.linear = Linear::make(layout_, "output_layer.linear", d, cfg_.vocab, true);
    if (!cfg_.ar) final_.ada_ln = Linear::make(layout_, "output_layer.adaLN_modulation", cfg_.cond_dim, 2 * d, true);
  }

  const DiTConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }

  // FLOPs of the matrix multiplies per token for forward + backward (6 N_matmul) plus attention
  // (12 L d T), the usual MFU accounting.
  double train_flops_per_token(std::int64_t seq_len) const {
    return 6 * (body_matmul_params() + head_matmul_params()) +
           12 * static_cast<double>(cfg_.blocks) * static_cast<double>(cfg_.hidden) * static_cast<double>(seq_len);
  }
  // FLOPs a step actually executes when the output head runs on `head_rows` of `tokens` rows
  // (MaskedDiffusion trims it to the masked rows).
  double executed_train_flops(std::int64_t seq_len, std::int64_t tokens, std::int64_t head_rows) const {
    return static_cast<double>(tokens) * (train_flops_per_token(seq_len) - 6 * head_matmul_params()) +
           static_cast<double>(head_rows) * 6 * head_matmul_params();
  }
  double body_matmul_params() const {
    const double d = static_cast<double>(cfg_.hidden), r = static_cast<double>(cfg_.mlp_ratio);
    return static_cast<double>(cfg_.blocks) * (3 * d * d + d * d + 2 * r * d * d);
  }
  double head_matmul_params() const { return static_cast<double>(cfg_.hidden) * static_cast<double>(cfg_.vocab); }

  // Initialization of DESIGN §1 from Philox (purpose Init, step = parameter index): embedding
  // U(+-1/sqrt(d)); Linear weights and biases U(+-1/sqrt(in)) (PyTorch's default); LayerNorm
  // weights 1; adaLN modulations and the output linear layer 0.
  template <class T>
  void init(ParamStore<Host, T>& store, std::uint64_t seed) const {
    Philox rng{seed};
    for (std::size_t i = 0; i < layout_.specs().size(); ++i) {
      const ParamSpec& s = layout_.spec(static_cast<int>(i));
      T* v = store.value(static_cast<int>(i)).data;
      const bool zero = s.name.find("adaLN_modulation") != std::string::npos ||
                        s.name.rfind("output_layer.linear", 0) == 0;
      const bool norm = s.name.find("norm") != std::string::npos;
      double bound = 0;
      if (s.name == "vocab_embed.embedding") {
        bound = 1.0 / std::sqrt(static_cast<double>(cfg_.hidden));
      } else if (!zero && !norm) {  // a Linear weight [out, in] or bias: fan_in = in
        const ParamSpec& w = s.shape.size() == 2 ? s : layout_.spec(layout_.find(s.name.substr(0, s.name.size() - 5) + ".weight"));
        bound = 1.0 / std::sqrt(static_cast<double>(w.shape[1]));
      }
      for (std::int64_t k = 0; k < s.numel; ++k) {
        if (zero) v[k] = T(0);
        else if (norm) v[k] = T(1);
        else v[k] = static_cast<T>((2.0 * rng.uniform_double(Purpose::Init, static_cast<std::uint32_t>(i),
                                                             static_cast<std::uint64_t>(k)) - 1.0) * bound);
      }
    }
  }

  // Logits (B*T, V) for the inputs, rows head_ld<B>() apart (head). `p` are the parameters in
  // layout order (ParamStore::params).
  template <class B, class T, class G>
  Var<T, B> forward(Tape<B, T, G>& tape, const Params<B, T, G>& p, const DiTInputs& in) const {
    return head(tape, p, hidden(tape, p, in));
  }

  // The multiple the output head's logits rows are padded to on backend B, and their row stride
  // (leading dimension): V rounded up to it (50258 -> 50304 on CUDA).
  template <class B>
  std::int64_t head_ld_multiple() const {
    return cfg_.head_ld_multiple > 0 ? cfg_.head_ld_multiple : kHeadLdMultiple<B>;
  }
  template <class B>
  std::int64_t head_ld() const {
    const std::int64_t m = head_ld_multiple<B>();
    return (cfg_.vocab + m - 1) / m * m;
  }

  // The output head alone: logits (M, V) for M rows of final hidden states, so a loss can run
  // it on the rows that matter (the masked ones under SUBS). The logits' rows are head_ld<B>()
  // apart (kHeadLdMultiple: aligned rows for cuBLASLt's fast kernels); the head's GEMM writes
  // the V columns, and every reader (the cross-entropy and its in-place gradient, the head's
  // backward GEMMs and bias-gradient sum, the samplers, downloads) goes through MatrixView::ld
  // and touches only those V columns: the pad is never read (the Host's results are bit-identical
  // for every stride). Its weight and gradient stay (V, d): checkpoints keep the official rows.
  template <class B, class T, class G>
  Var<T, B> head(Tape<B, T, G>& tape, const Params<B, T, G>& p, Var<T, B> h) const {
    const auto range = tape.range("head");
    return final_.linear.forward(tape, p, h, /*gelu=*/false, head_ld_multiple<B>());
  }

  // Everything before the output head: the final adaLN-modulated LayerNorm output (B*T, d).
  // kFuse: the fused residual + LayerNorm ops (the CUDA default; a Host test sets it to check
  // that path against the unfused one).
  template <class B, class T, class G, bool kFuse = kFusedResidualLayerNorm<B>>
  Var<T, B> hidden(Tape<B, T, G>& tape, const Params<B, T, G>& p, const DiTInputs& in) const {
    MDLM_CHECK(p.size() == layout_.specs().size(), "forward: ", p.size(), " parameters given, the model has ",
               layout_.specs().size());
    MDLM_CHECK(in.batch > 0 && in.seq_len > 0, "forward: empty batch (", in.batch, " x ", in.seq_len, ")");
    const std::int64_t n = in.batch * in.seq_len, d = cfg_.hidden, L = in.seq_len;
    const double eps = cfg_.layer_norm_eps;
    // Each part's parameters (the embedding and timestep MLP, each block, the output layer) are
    // used only from their mark on, so backward() reports their gradients final there
    // (data-parallel training starts their all-reduce while the earlier layers' backward runs).
    tape.mark_gradients_final(0, block_begin_.front());
    Var<T, B> x = EmbeddingOp<B, T, G>::forward(tape, in.ids, in.host_ids, n, p[static_cast<std::size_t>(embed_.table)]);

    Var<T, B> c;
    if (!cfg_.ar) {
      std::vector<T> sigma(static_cast<std::size_t>(in.batch), T(0));
      if (cfg_.time_conditioning && !in.resident_sigma) {
        MDLM_CHECK(in.sigma != nullptr, "forward: time conditioning is on but no sigma was given");
        for (std::int64_t b = 0; b < in.batch; ++b) sigma[static_cast<std::size_t>(b)] = static_cast<T>(in.sigma[b]);
      }
      auto emb = tape.template scratch<T>(Shape{in.batch, cfg_.freq_dim});
      MatrixView<T, B> emb_view(emb.data, in.batch, cfg_.freq_dim);
      if (in.resident_sigma) {
        timestep_embedding_resident(tape.backend(), cfg_.time_conditioning ? in.sigma_device : nullptr, in.batch, emb_view);
      } else {
        timestep_embedding(tape.backend(), sigma.data(), in.batch, emb_view);
      }
      Var<T, B> e = tape.constant(emb_view);
      const auto range = tape.range("sigma_map");
      Var<T, B> h = SiluOp<B, T, G>::forward(tape, sigma_map_.l0.forward(tape, p, e));
      c = SiluOp<B, T, G>::forward(tape, sigma_map_.l2.forward(tape, p, h));
    }

    // With kFuse (kFusedResidualLayerNorm<B>: CUDA), each gated residual is fused with the LayerNorm
    // that reads it (ResidualLayerNormOp): a block's first residual with its norm2, and its
    // second residual with the next block's norm1 (the last block's: with norm_final). That
    // second residual is recorded in the next part, after the next part's gradient mark and
    // inside its profiling range: the fused op reads the next part's norm weight (and adaLN
    // shift/scale), which may only be used from that part's mark on, and no parameter of the
    // block it came from (its gate2 and branch are activations, whose gradients reach that
    // block's parameters through ops recorded after its own mark). The marks stay where they
    // are. The dropout draws keep their order (no other op reserves Philox ranges in between),
    // so the masks are the unfused path's. The Host keeps the unfused ops (bit-identical to the
    // golden fixtures).
    constexpr bool fused = kFuse;
    Var<T, B> pending, pending_gate;  // fused: the previous block's MLP branch and gate2, not yet added
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const DiTBlock& blk = blocks_[i];
      tape.mark_gradients_final(block_begin_[i], block_begin_[i + 1]);
      const auto range = tape.range(block_names_[i].c_str());
      Var<T, B> shift1, scale1, gate1, shift2, scale2, gate2;
      if (!cfg_.ar) {
        Var<T, B> mod = blk.ada_ln.forward(tape, p, c);  // (B, 6d)
        shift1 = tape.slice_cols(mod, 0 * d, d);
        scale1 = tape.slice_cols(mod, 1 * d, d);
        gate1 = tape.slice_cols(mod, 2 * d, d);
        shift2 = tape.slice_cols(mod, 3 * d, d);
        scale2 = tape.slice_cols(mod, 4 * d, d);
        gate2 = tape.slice_cols(mod, 5 * d, d);
      }
      Var<T, B> h;
      if (fused && pending.valid()) {
        const auto o = blk.norm1.forward_residual(tape, p, x, pending, pending_gate, cfg_.dropout, shift1, scale1, L, eps);
        x = o.x;
        h = o.h;
      } else {
        h = blk.norm1.forward(tape, p, x, shift1, scale1, L, eps);
      }
      Var<T, B> qkv = RopeOp<B, T, G>::forward(tape, blk.attn.qkv.forward(tape, p, h), L, cfg_.heads, cfg_.rope_base);
      Var<T, B> a = blk.attn.out.forward(tape, p, ModelAttentionOp<B, T, G>::forward(tape, qkv, L, cfg_.heads, cfg_.ar));
      Var<T, B> h2;
      if constexpr (fused) {
        const auto o = blk.norm2.forward_residual(tape, p, x, a, gate1, cfg_.dropout, shift2, scale2, L, eps);
        x = o.x;
        h2 = o.h;
      } else {
        x = GatedResidualOp<B, T, G>::forward(tape, x, a, gate1, L, cfg_.dropout);
        h2 = blk.norm2.forward(tape, p, x, shift2, scale2, L, eps);
      }
      Var<T, B> m = blk.mlp.proj.forward(tape, p, blk.mlp.fc.forward(tape, p, h2, /*gelu=*/true));
      if constexpr (fused) {
        pending = m;
        pending_gate = gate2;
      } else {
        x = GatedResidualOp<B, T, G>::forward(tape, x, m, gate2, L, cfg_.dropout);
      }
    }

    tape.mark_gradients_final(block_begin_.back(), layout_.buffer_elements());
    const auto range = tape.range("output_layer");
    Var<T, B> shift, scale;
    if (!cfg_.ar) {
      Var<T, B> mod = final_.ada_ln.forward(tape, p, c);  // (B, 2d): shift, scale
      shift = tape.slice_cols(mod, 0, d);
      scale = tape.slice_cols(mod, d, d);
    }
    if (fused && pending.valid()) {
      return final_.norm_final.forward_residual(tape, p, x, pending, pending_gate, cfg_.dropout, shift, scale, L, eps).h;
    }
    return final_.norm_final.forward(tape, p, x, shift, scale, L, eps);
  }

 private:
  DiTConfig cfg_;
  ParamLayout layout_;
  Embedding embed_;
  TimestepEmbedder sigma_map_;
  std::vector<DiTBlock> blocks_;
  FinalLayer final_;
  // Where block i's parameters begin in the parameter buffer (elements); the last entry is where
  // the output layer's begin.
  std::vector<std::int64_t> block_begin_;
  std::vector<std::string> block_names_;  // profiling ranges: "block 0", ...
};

}  // namespace mdlm
