#pragma once
// SUBS parameterization and the continuous-time NELBO, fused (DESIGN §1):
//   at a masked position (z_t = m): log p = log_softmax(logits with -1e6 added to the mask
//     logit), and the token's loss is -log p[x0] * w_b, w_b = sigma'(t_b) / expm1(sigma(t_b));
//   at an unmasked position SUBS carries z_t over (log one-hot): zero loss, zero gradient.
//   loss = sum_r loss_r * loss_mask_r / sum_r loss_mask_r       (token mean over real tokens)
// The fused op computes, per masked row, the log-sum-exp once; backward forms
//   dlogits[r, v] = dloss * coef_r * (softmax_v - [v == x0_r]),  coef_r = w_b mask_r / sum(mask)
// without ever storing probabilities. The AR baseline's token-mean NLL shares the kernel:
// row (b, t) predicts x[b, t + 1] with weight 1, the last position of each sequence none.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

inline constexpr double kSubsMaskLogitShift = -1e6;  // the official MDLM "neg_infinity"

// Per-row cross-entropy targets shared by the MDLM and AR losses (pointers in backend memory).
struct CrossEntropyRows {
  const std::int32_t* target = nullptr;  // (N): the token whose log-probability counts
  const double* coef = nullptr;          // (N): loss weight of the row (0: the row is skipped)
  std::int64_t suppressed = -1;          // a column shifted by -1e6 (the mask id), or -1
};

// loss[0] = sum_r coef_r * -log softmax(row_r)[target_r] (rows summed in order); writes each
// counted row's log-sum-exp to lse (others: NaN). `row_loss` (logits.rows doubles in backend
// memory) holds the per-row losses; nullptr: the function allocates it (on CUDA that costs an
// allocation and a synchronization, which the tape op avoids by passing its scratch).
template <class T>
void cross_entropy_forward(const Host& ctx, MatrixView<const T, Host> logits, CrossEntropyRows rows, double* lse,
                           T* loss, double* row_loss_scratch = nullptr) {
  std::vector<double> own(row_loss_scratch ? 0 : static_cast<std::size_t>(logits.rows));
  double* row_loss = row_loss_scratch ? row_loss_scratch : own.data();
  std::fill(row_loss, row_loss + logits.rows, 0.0);
  ctx.parallel_for(logits.rows, [&](std::int64_t r) {
    if (rows.coef[r] == 0.0) {
      lse[r] = std::numeric_limits<double>::quiet_NaN();
      return;
    }
    const T* l = logits.data + r * logits.ld;
    auto at = [&](std::int64_t v) { return static_cast<double>(l[v]) + (v == rows.suppressed ? kSubsMaskLogitShift : 0.0); };
    double mx = -std::numeric_limits<double>::infinity();
    for (std::int64_t v = 0; v < logits.cols; ++v) mx = std::max(mx, at(v));
    double s = 0;
    for (std::int64_t v = 0; v < logits.cols; ++v) s += std::exp(at(v) - mx);
    lse[r] = mx + std::log(s);
    row_loss[r] = rows.coef[r] * (lse[r] - at(rows.target[r]));
  });
  double total = 0;  // fixed order: deterministic
  for (std::int64_t r = 0; r < logits.rows; ++r) total += row_loss[r];
  loss[0] = static_cast<T>(total);
}

// dlogits (written or added) = dloss[0] * coef_r * (softmax - onehot(target)) on counted rows.
template <class T>
void cross_entropy_backward(const Host& ctx, MatrixView<const T, Host> logits, CrossEntropyRows rows, const double* lse,
                            const T* dloss, MatrixView<T, Host> dlogits, bool accumulate) {
  const double scale = static_cast<double>(dloss[0]);
  ctx.parallel_for(logits.rows, [&](std::int64_t r) {
    const T* l = logits.data + r * logits.ld;
    T* d = dlogits.data + r * dlogits.ld;
    const double c = scale * rows.coef[r];
    for (std::int64_t v = 0; v < logits.cols; ++v) {
      double g = 0;
      if (c != 0.0) {
        const double z = static_cast<double>(l[v]) + (v == rows.suppressed ? kSubsMaskLogitShift : 0.0);
        g = c * (std::exp(z - lse[r]) - (v == rows.target[r] ? 1.0 : 0.0));
      }
      d[v] = accumulate ? static_cast<T>(d[v] + g) : static_cast<T>(g);
    }
  });
}

// The scalar loss as a tape op: output is a (1, 1) variable.
template <class B, class T, class G = T>
struct CrossEntropyOp {
  static constexpr const char* kName = "cross_entropy";  // its profiling range
  using V = Var<T, B>;
  struct Ctx {
    V logits, loss;
    CrossEntropyRows rows;
    const double* lse;
  };
  static V forward(Tape<B, T, G>& tape, V logits, CrossEntropyRows rows) {
    const auto range = tape.range(kName);
    auto lse = tape.template scratch<double>(Shape{logits.rows()});
    auto row_loss = tape.template scratch<double>(Shape{std::max<std::int64_t>(logits.rows(), 1)});
    V loss = tape.new_var(1, 1);
    cross_entropy_forward(tape.backend(), MatrixView<const T, B>(logits.value), rows, lse.data, loss.value.data,
                          row_loss.data);
    tape.template record<CrossEntropyOp>(Ctx{logits, loss, rows, lse.data});
    return loss;
  }
  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    const T* dloss = tape.grad_out(ctx.loss).data;
    auto dl = tape.grad_in_place(ctx.logits);  // dlogits over the logits: one (M, V) buffer, not two
    if (!dl.needed) return;
    cross_entropy_backward(tape.backend(), MatrixView<const T, B>(ctx.logits.value), ctx.rows, ctx.lse, dloss, dl.grad,
                           dl.accumulate);
  }
};

// The denominators of the two token means: the MDLM NELBO's (every token of the loss mask) and
// the AR NLL's (every target, i.e. the loss mask of positions 1..L-1 of each sequence).
inline double subs_loss_denominator(const double* loss_mask, std::int64_t n) {
  double count = 0;
  for (std::int64_t r = 0; r < n; ++r) count += loss_mask[r];
  return count;
}
inline double ar_loss_denominator(const double* loss_mask, std::int64_t n, std::int64_t seq_len) {
  double count = 0;
  for (std::int64_t r = 0; r < n; ++r) {
    if ((r + 1) % seq_len != 0) count += loss_mask[r + 1];
  }
  return count;
}

// Row targets and weights of the MDLM continuous-time NELBO (token mean over loss_mask).
// weight[b] = sigma'(t_b) / expm1(sigma(t_b)); rows with z_t != mask get coefficient 0.
// `denominator` (0: the loss mask's own count) divides the sum instead: a data-parallel rank
// holding a slice of the global batch divides by the global batch's count, so the ranks' losses
// add up to the global batch's loss.
struct SubsTargets {
  std::vector<std::int32_t> target;
  std::vector<double> coef;
  std::int64_t mask_id = -1;
  CrossEntropyRows rows() const { return {target.data(), coef.data(), mask_id}; }

  static SubsTargets make(const std::vector<std::int32_t>& x0, const std::vector<std::int32_t>& zt,
                          const std::vector<double>& loss_mask, const std::vector<double>& weight, std::int64_t seq_len,
                          std::int64_t mask_id, double denominator = 0) {
    MDLM_CHECK(x0.size() == zt.size() && zt.size() == loss_mask.size(), "subs loss: x0, z_t and loss mask sizes differ (",
               x0.size(), ", ", zt.size(), ", ", loss_mask.size(), ")");
    MDLM_CHECK(weight.size() * static_cast<std::size_t>(seq_len) == x0.size(), "subs loss: ", weight.size(),
               " weights for ", x0.size(), " tokens of length ", seq_len);
    const double count = denominator > 0 ? denominator
                                         : subs_loss_denominator(loss_mask.data(), static_cast<std::int64_t>(loss_mask.size()));
    MDLM_CHECK(count > 0, "subs loss: the loss mask selects no token");
    SubsTargets s;
    s.mask_id = mask_id;
    s.target = x0;
    s.coef.resize(x0.size());
    for (std::size_t r = 0; r < x0.size(); ++r) {
      const bool masked = zt[r] == mask_id;
      s.coef[r] = masked ? weight[r / static_cast<std::size_t>(seq_len)] * loss_mask[r] / count : 0.0;
    }
    return s;
  }
};

// Row targets of the AR baseline: row (b, t) predicts x[b, t + 1]; token mean over the
// targets' loss mask (divided by `denominator` instead, when positive: see SubsTargets).
inline SubsTargets ar_targets(const std::vector<std::int32_t>& x, const std::vector<double>& loss_mask,
                              std::int64_t seq_len, double denominator = 0) {
  MDLM_CHECK(x.size() == loss_mask.size() && seq_len > 1 && x.size() % static_cast<std::size_t>(seq_len) == 0,
             "ar loss: ", x.size(), " tokens, ", loss_mask.size(), " mask entries, length ", seq_len);
  SubsTargets s;
  s.target.assign(x.size(), 0);
  s.coef.assign(x.size(), 0.0);
  const double count =
      denominator > 0 ? denominator : ar_loss_denominator(loss_mask.data(), static_cast<std::int64_t>(loss_mask.size()), seq_len);
  MDLM_CHECK(count > 0, "ar loss: the loss mask selects no target");
  for (std::size_t r = 0; r < x.size(); ++r) {
    if ((r + 1) % static_cast<std::size_t>(seq_len) == 0) continue;
    s.target[r] = x[r + 1];
    s.coef[r] = loss_mask[r + 1] / count;
  }
  return s;
}

}  // namespace mdlm

namespace mdlm {

// The SUBS log-probabilities (N, V) the loss reads, as the official code materializes them:
// masked rows log_softmax(logits with -1e6 on the mask logit); unmasked rows a "log one-hot"
// of z_t (0 at z_t, -1e6 elsewhere). For inspection and fixtures; training uses the fused op.
template <class T>
void subs_log_probs(const Host& ctx, MatrixView<const T, Host> logits, const std::int32_t* zt, std::int64_t mask_id,
                    MatrixView<T, Host> out) {
  ctx.parallel_for(logits.rows, [&](std::int64_t r) {
    const T* l = logits.data + r * logits.ld;
    T* o = out.data + r * out.ld;
    if (zt[r] != mask_id) {
      for (std::int64_t v = 0; v < logits.cols; ++v) o[v] = static_cast<T>(v == zt[r] ? 0.0 : kSubsMaskLogitShift);
      return;
    }
    auto at = [&](std::int64_t v) { return static_cast<double>(l[v]) + (v == mask_id ? kSubsMaskLogitShift : 0.0); };
    double mx = -std::numeric_limits<double>::infinity();
    for (std::int64_t v = 0; v < logits.cols; ++v) mx = std::max(mx, at(v));
    double s = 0;
    for (std::int64_t v = 0; v < logits.cols; ++v) s += std::exp(at(v) - mx);
    const double lse = mx + std::log(s);
    for (std::int64_t v = 0; v < logits.cols; ++v) o[v] = static_cast<T>(at(v) - lse);
  });
}

}  // namespace mdlm
