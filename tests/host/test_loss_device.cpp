// MaskedDiffusion::loss as a device-resident step (issue 17): the per-token preparation, the row
// partition and the head's targets run as backend kernels (Host twins here) fed by one
// non-synchronizing staged copy. The Host's result must equal, bit for bit, the path it replaced
// (loss_host_drawn: z_t drawn on the host, targets built by SubsTargets::make), in the loss, the
// draws and every gradient.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/reference.hpp"
#include "mdlm/mdlm.hpp"

using namespace mdlm;

namespace {

template <class T>
void jittered_init(const DiT& model, ParamStore<Host, T>& store) {
  model.init(store, 3);
  Philox jitter{11};
  for (std::int64_t i = 0; i < model.layout().buffer_elements(); ++i) {
    store.values().data()[i] += static_cast<T>(0.1 * (jitter.uniform_double(Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5));
  }
}

template <class T>
bool same_bits(const T* a, const T* b, std::int64_t n) {
  return std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(T)) == 0;
}

template <class T>
void check_loss_matches_host_drawn(bool with_mask, std::int64_t multiple, bool trim, bool slice, bool time_cond) {
  CAPTURE(with_mask);
  CAPTURE(multiple);
  CAPTURE(trim);
  CAPTURE(slice);
  CAPTURE(time_cond);
  DiTConfig cfg = mdlm::testing::small_dit(21, 16, 2, 2, 8);
  cfg.dropout = 0.0f;
  cfg.time_conditioning = time_cond;
  DiT model(cfg);
  ParamStore<Host, T> a(model.layout()), b(model.layout());
  jittered_init(model, a);
  std::memcpy(b.values().data(), a.values().data(), a.values().bytes());

  const std::int64_t global = 4, len = 24, first = slice ? 1 : 0, batch = slice ? 2 : global;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(global * len));
  std::vector<double> mask(x0.size());
  for (std::size_t i = 0; i < x0.size(); ++i) {
    x0[i] = static_cast<std::int32_t>((i * 5 + 3) % 21);  // some tokens already are the mask id 20
    mask[i] = (i % 7 == 3) ? 0.0 : (i % 5 == 1 ? 0.5 : 1.0);
  }
  TokenBatch whole{x0.data(), global, len, with_mask ? mask.data() : nullptr};
  TokenBatch tb{x0.data() + first * len, batch, len, with_mask ? mask.data() + first * len : nullptr};
  if (slice) {
    tb.first = first;
    tb.global_batch = global;
    tb.loss_denominator = MaskedDiffusion<LogLinearSchedule>::loss_denominator(whole);
  }
  DiffusionOptions opt;
  opt.mask_id = 20;
  opt.trim_head = trim;
  opt.head_row_multiple = multiple;
  MaskedDiffusion<LogLinearSchedule> obj(LogLinearSchedule{}, opt);
  Host host;
  Tape<Host, T> ta(host), tb_tape(host);
  const T one = 1;
  for (std::uint32_t step = 3; step < 5; ++step) {  // two steps: the staging and the arenas are reused
    CAPTURE(step);
    ta.reset();
    tb_tape.reset();
    std::memset(a.grads().data(), 0, a.grads().bytes());
    std::memset(b.grads().data(), 0, b.grads().bytes());
    auto na = obj.loss(ta, model, a.params(), tb, Philox{17}, step);
    auto ref = obj.loss_host_drawn(tb_tape, model, b.params(), tb, Philox{17}, step);
    CHECK(same_bits(na.loss.value.data, ref.loss.value.data, 1));
    CHECK(na.t == ref.t);
    CHECK(na.sigma == ref.sigma);
    CHECK(na.zt == ref.zt);
    CHECK(na.masked == ref.masked);
    CHECK(na.masked > 0);
    CHECK(na.loss_tokens == ref.loss_tokens);
    CHECK(na.head_rows == ref.head_rows);
    CHECK(same_bits(na.ids_device, ref.zt.data(), batch * len));
    // The count pass (host) and the partition's count (backend memory) agree.
    if (trim) {
      CHECK(*na.selected_device == na.selected_rows);
      CHECK(na.head_rows >= na.selected_rows);
    }
    ta.backward(na.loss, MatrixView<const T, Host>(&one, 1, 1));
    tb_tape.backward(ref.loss, MatrixView<const T, Host>(&one, 1, 1));
    CHECK(same_bits(a.grads().data(), b.grads().data(), model.layout().buffer_elements()));
  }
}

}  // namespace

TEST_CASE("MaskedDiffusion::loss equals the host-drawn path bit for bit (fp64, fp32; masks, multiples, slices)") {
  for (bool with_mask : {false, true}) {
    for (std::int64_t multiple : {1, 7, 128}) {
      for (bool slice : {false, true}) {
        check_loss_matches_host_drawn<double>(with_mask, multiple, true, slice, true);
        check_loss_matches_host_drawn<float>(with_mask, multiple, true, slice, multiple == 7);
      }
    }
  }
  check_loss_matches_host_drawn<double>(true, 1, /*trim=*/false, true, true);
  check_loss_matches_host_drawn<float>(false, 1, /*trim=*/false, false, false);
}

TEST_CASE("partition_rows (Host) writes cub::DevicePartition::Flagged's documented order") {
  // CUB's example: items [1..8], flags [1, 0, 0, 1, 0, 1, 1, 0] -> [1, 4, 6, 7, 8, 5, 3, 2], 4
  // selected (selected in order, the rest reversed at the back); here the items are rows 0..7.
  const std::vector<std::uint8_t> flags{1, 0, 0, 1, 0, 1, 1, 0};
  std::vector<std::int32_t> rows(flags.size(), -1);
  std::int32_t selected = -1;
  partition_rows(Host{}, flags.data(), 8, rows.data(), &selected, nullptr, partition_rows_scratch(Host{}, 8));
  CHECK(rows == std::vector<std::int32_t>{0, 3, 5, 6, 7, 4, 2, 1});
  CHECK(selected == 4);
  const std::vector<std::uint8_t> none(5, 0);
  partition_rows(Host{}, none.data(), 5, rows.data(), &selected, nullptr, 0);
  CHECK(std::vector<std::int32_t>(rows.begin(), rows.begin() + 5) == std::vector<std::int32_t>{4, 3, 2, 1, 0});
  CHECK(selected == 0);
}

TEST_CASE("subs_prepare: the draws of absorbing_mask, SubsTargets::make's coefficients, flags = coef != 0") {
  const std::int64_t batch = 3, len = 40, n = batch * len;
  std::vector<std::int32_t> x0(static_cast<std::size_t>(n));
  std::vector<double> mask(x0.size());
  for (std::size_t i = 0; i < x0.size(); ++i) {
    x0[i] = static_cast<std::int32_t>((i * 3 + 1) % 50);
    mask[i] = i % 4 == 0 ? 0.0 : 1.0;
  }
  const std::vector<double> move{0.2, 0.5, 0.9}, weight{3.0, 1.5, 1.1};
  const Philox rng{5};
  const std::uint64_t first = 80;
  SubsPrepareArgs args{x0.data(), mask.data(), move.data(), weight.data(), n, len, 37.0, rng, 9, first, 49};
  std::vector<std::int32_t> zt(x0.size()), ref(x0.size());
  std::vector<double> coef(x0.size());
  std::vector<std::uint8_t> flags(x0.size());
  subs_prepare(Host{}, args, zt.data(), coef.data(), flags.data());
  absorbing_mask(Host{}, x0.data(), move.data(), n, len, rng, 9, 49, ref.data(), first);
  CHECK(zt == ref);
  const SubsTargets t = SubsTargets::make(x0, ref, mask, weight, len, 49, 37.0);
  CHECK(coef == t.coef);
  std::int64_t count = 0, flagged = 0;
  for (std::size_t r = 0; r < coef.size(); ++r) {
    CHECK(flags[r] == (t.coef[r] != 0.0 ? 1 : 0));
    count += t.coef[r] != 0.0;
    flagged += flags[r];
  }
  CHECK(flagged == count);
  CHECK(count > 0);
  std::vector<std::int32_t> rows(x0.size());
  std::int32_t selected = -1;
  partition_rows(Host{}, flags.data(), n, rows.data(), &selected, nullptr, 0);
  CHECK(selected == count);
  std::vector<std::int32_t> head_target(x0.size());
  std::vector<double> head_coef(x0.size());
  gather_row_targets(Host{}, rows.data(), n, x0.data(), coef.data(), head_target.data(), head_coef.data());
  for (std::int64_t i = 0; i < n; ++i) {
    CHECK(head_target[static_cast<std::size_t>(i)] == x0[static_cast<std::size_t>(rows[static_cast<std::size_t>(i)])]);
    CHECK((head_coef[static_cast<std::size_t>(i)] != 0.0) == (i < selected));
  }
}

TEST_CASE("Tape::persistent keeps one object per type across reset(); Staging<Host> copies") {
  Host host;
  Tape<Host, double> tape(host);
  Staging<Host>& s = tape.persistent<Staging<Host>>();
  tape.reset();
  CHECK(&tape.persistent<Staging<Host>>() == &s);
  std::byte* h = s.acquire(host, 8);
  const double v = 2.5;
  std::memcpy(h, &v, sizeof v);
  double out = 0;
  s.submit(host, &out, sizeof out);
  CHECK(out == 2.5);
  CHECK(static_cast<void*>(&tape.persistent<std::vector<int>>()) != static_cast<void*>(&s));
}

TEST_CASE("MaskedDiffusion::loss checks the token ids on the host") {
  DiTConfig cfg = mdlm::testing::small_dit(10, 8, 2, 1, 4);
  DiT dit(cfg);
  ParamStore<Host, double> pd(dit.layout());
  std::vector<std::int32_t> bad{1, 2, 30, 4};
  Host host;
  Tape<Host, double> tape(host);
  DiffusionOptions opt;
  opt.mask_id = 9;
  MaskedDiffusion<LogLinearSchedule> obj(LogLinearSchedule{}, opt);
  CHECK_THROWS_WITH_AS(obj.loss(tape, dit, pd.params(), TokenBatch{bad.data(), 1, 4, nullptr}, Philox{1}, 0),
                       doctest::Contains("token id 30 at position 2"), Error);
  std::vector<std::int32_t> ok{1, 2, 3, 4};
  std::vector<double> none{0, 0, 0, 0};
  CHECK_THROWS_WITH_AS(obj.loss(tape, dit, pd.params(), TokenBatch{ok.data(), 1, 4, none.data()}, Philox{1}, 0),
                       doctest::Contains("selects no token"), Error);
}

namespace {
template <class T>
void check_ar_matches_host_built(bool with_mask, bool slice) {
  CAPTURE(with_mask);
  CAPTURE(slice);
  DiTConfig cfg = mdlm::testing::small_dit(21, 16, 2, 2, 8);
  cfg.dropout = 0.0f;
  cfg.ar = true;
  DiT model(cfg);
  ParamStore<Host, T> a(model.layout()), b(model.layout());
  jittered_init(model, a);
  std::memcpy(b.values().data(), a.values().data(), a.values().bytes());
  const std::int64_t global = 3, len = 10, first = slice ? 1 : 0, batch = slice ? 2 : global;
  std::vector<std::int32_t> x(static_cast<std::size_t>(global * len));
  std::vector<double> mask(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<std::int32_t>((i * 7 + 2) % 21);
    mask[i] = i % 6 == 2 ? 0.0 : 1.0;
  }
  TokenBatch whole{x.data(), global, len, with_mask ? mask.data() : nullptr};
  TokenBatch tb{x.data() + first * len, batch, len, with_mask ? mask.data() + first * len : nullptr};
  if (slice) {
    tb.first = first;
    tb.global_batch = global;
    tb.loss_denominator = Autoregressive::loss_denominator(whole);
  }
  Host host;
  Tape<Host, T> ta(host), tr(host);
  auto na = Autoregressive{}.loss(ta, model, a.params(), tb);
  auto ref = Autoregressive{}.loss_host_built(tr, model, b.params(), tb);
  CHECK(same_bits(na.loss.value.data, ref.loss.value.data, 1));
  CHECK(na.zt == ref.zt);
  CHECK(na.loss_tokens == ref.loss_tokens);
  CHECK(na.head_rows == ref.head_rows);
  const T one = 1;
  ta.backward(na.loss, MatrixView<const T, Host>(&one, 1, 1));
  tr.backward(ref.loss, MatrixView<const T, Host>(&one, 1, 1));
  CHECK(same_bits(a.grads().data(), b.grads().data(), model.layout().buffer_elements()));
}
}  // namespace

TEST_CASE("Autoregressive::loss (targets built by ar_prepare) equals the host-built path bit for bit") {
  for (bool with_mask : {false, true}) {
    for (bool slice : {false, true}) {
      check_ar_matches_host_built<double>(with_mask, slice);
      check_ar_matches_host_built<float>(with_mask, slice);
    }
  }
}

TEST_CASE("ar_prepare: ar_targets' targets and coefficients") {
  const std::int64_t len = 5, n = 15;
  std::vector<std::int32_t> x(static_cast<std::size_t>(n));
  std::vector<double> mask(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<std::int32_t>(i * 3 % 11);
    mask[i] = i % 4 == 1 ? 0.0 : 0.5;
  }
  const SubsTargets ref = ar_targets(x, mask, len, 7.0);
  std::vector<std::int32_t> target(x.size());
  std::vector<double> coef(x.size());
  ar_prepare(Host{}, ArPrepareArgs{x.data(), mask.data(), n, len, 7.0}, target.data(), coef.data());
  CHECK(target == ref.target);
  CHECK(coef == ref.coef);
}
