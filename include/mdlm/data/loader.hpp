#pragma once
// Batching in the two MDLM styles and a shuffling loader whose position is part of the
// checkpoint.
//   wrap (OpenWebText style): the shard's documents + EOS, concatenated, cut into chunks of
//        L - 2 tokens, each framed [BOS] chunk [EOS]; every token counts in the loss.
//   pad (LM1B style): one document per sequence, [BOS] doc[:L-2] [EOS], padded with PAD to L;
//        PAD positions are excluded from the loss.
// The order of sequences is a Philox permutation per epoch (purpose Shuffle, step = epoch), so
// the position (epoch, index) is all a resumed run needs.

#include <cstdint>
#include <string>
#include <vector>

#include "mdlm/core/error.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/data/shard.hpp"
#include "mdlm/tokenizers/tokenizer.hpp"

namespace mdlm {

enum class BatchStyle { Wrap, Pad };

inline BatchStyle parse_batch_style(const std::string& s) {
  if (s == "wrap") return BatchStyle::Wrap;
  if (s == "pad") return BatchStyle::Pad;
  MDLM_FAIL("unknown batching style '", s, "' (expected wrap or pad)");
}

// The sequences of one shard in one style.
class SequenceSet {
 public:
  SequenceSet(const Shard& shard, BatchStyle style, std::int64_t seq_len, SpecialTokens sp) : style_(style), len_(seq_len), sp_(sp) {
    MDLM_CHECK(seq_len >= 3, "sequence length ", seq_len, " must be at least 3 ([BOS] token [EOS])");
    MDLM_CHECK(sp.bos >= 0 && sp.eos >= 0, "the tokenizer needs BOS and EOS ids");
    tokens_ = &shard.tokens;
    if (style == BatchStyle::Wrap) {
      count_ = static_cast<std::int64_t>(shard.tokens.size()) / (seq_len - 2);
    } else {
      MDLM_CHECK(sp.pad >= 0, "pad batching needs a PAD id");
      std::int64_t start = 0;
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(shard.tokens.size()); ++i) {
        if (shard.tokens[static_cast<std::size_t>(i)] == shard.header.eos) {
          doc_start_.push_back(start);
          doc_end_.push_back(i);
          start = i + 1;
        }
      }
      count_ = static_cast<std::int64_t>(doc_start_.size());
    }
    MDLM_CHECK(count_ > 0, "the shard holds no complete sequence of length ", seq_len);
  }

  std::int64_t size() const { return count_; }
  std::int64_t seq_len() const { return len_; }

  // Writes sequence k (L ids) and its loss mask (L values).
  void get(std::int64_t k, std::int32_t* ids, double* mask) const {
    const auto& t = *tokens_;
    ids[0] = sp_.bos;
    std::int64_t n;
    if (style_ == BatchStyle::Wrap) {
      const std::int64_t start = k * (len_ - 2);
      n = len_ - 2;
      for (std::int64_t i = 0; i < n; ++i) ids[1 + i] = t[static_cast<std::size_t>(start + i)];
    } else {
      const std::int64_t s = doc_start_[static_cast<std::size_t>(k)], e = doc_end_[static_cast<std::size_t>(k)];
      n = std::min(e - s, len_ - 2);
      for (std::int64_t i = 0; i < n; ++i) ids[1 + i] = t[static_cast<std::size_t>(s + i)];
    }
    ids[1 + n] = sp_.eos;
    for (std::int64_t i = 0; i < len_; ++i) mask[i] = i < n + 2 ? 1.0 : 0.0;
    for (std::int64_t i = n + 2; i < len_; ++i) ids[i] = sp_.pad;
  }

 private:
  BatchStyle style_;
  std::int64_t len_;
  SpecialTokens sp_;
  const std::vector<std::int32_t>* tokens_ = nullptr;
  std::int64_t count_ = 0;
  std::vector<std::int64_t> doc_start_, doc_end_;
};

struct LoaderPosition {
  std::uint64_t epoch = 0;
  std::uint64_t index = 0;  // next sequence within the epoch's permutation
};

// Shuffled batches of a sequence set, epoch after epoch.
class Loader {
 public:
  Loader(const SequenceSet& set, std::uint64_t seed, bool shuffle = true) : set_(&set), seed_(seed), shuffle_(shuffle) {
    make_order();
  }

  LoaderPosition position() const { return pos_; }
  void set_position(LoaderPosition p) {
    MDLM_CHECK(p.index <= static_cast<std::uint64_t>(set_->size()), "loader position ", p.index, " beyond ", set_->size(), " sequences");
    const bool new_epoch = p.epoch != pos_.epoch;
    pos_ = p;
    if (new_epoch) make_order();
  }

  // Fills B sequences (B x L ids and mask).
  void next(std::int64_t batch, std::vector<std::int32_t>& ids, std::vector<double>& mask) {
    next_slice(batch, 0, batch, ids, mask);
  }

  // Data-parallel reading: moves past a global batch of `batch` sequences, as next() does, and
  // fills only its sequences [first, first + count) (count x L ids and mask). The ranks of a job
  // read the slices of one global batch (BatchSlice), so together they read exactly the
  // sequences one process reads, and the position does not depend on how many ranks there are.
  void next_slice(std::int64_t batch, std::int64_t first, std::int64_t count, std::vector<std::int32_t>& ids,
                  std::vector<double>& mask) {
    MDLM_CHECK(first >= 0 && count >= 0 && first + count <= batch, "loader: sequences [", first, ", ", first + count,
               ") of a batch of ", batch);
    const std::int64_t len = set_->seq_len();
    ids.resize(static_cast<std::size_t>(count * len));
    mask.resize(ids.size());
    for (std::int64_t b = 0; b < batch; ++b) {
      if (pos_.index >= order_.size()) {
        ++pos_.epoch;
        pos_.index = 0;
        make_order();
      }
      const std::int64_t k = order_[pos_.index++];
      if (b >= first && b < first + count) set_->get(k, ids.data() + (b - first) * len, mask.data() + (b - first) * len);
    }
  }

 private:
  void make_order() {
    order_.resize(static_cast<std::size_t>(set_->size()));
    for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<std::int64_t>(i);
    if (!shuffle_) return;
    Philox rng{seed_};
    for (std::size_t i = order_.size(); i > 1; --i) {  // Fisher-Yates with 53-bit uniforms
      const auto j = static_cast<std::size_t>(
          rng.uniform_double(Purpose::Shuffle, static_cast<std::uint32_t>(pos_.epoch), i) * static_cast<double>(i));
      std::swap(order_[i - 1], order_[j]);
    }
  }

  const SequenceSet* set_;
  std::uint64_t seed_;
  bool shuffle_;
  LoaderPosition pos_;
  std::vector<std::int64_t> order_;
};

}  // namespace mdlm
