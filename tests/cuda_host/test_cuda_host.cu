// CUDA backend checks that need no GPU, run on the CPU in CI: the cuBLASLt descriptors,
// layouts and preferences of every GEMM the model issues (those calls run without a driver),
// the launch configuration of every kernel for every model shape against the device limits,
// the types of the block reductions, and the output head's padded logits layouts. This binary
// never touches a device.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "mdlm/cuda.cuh"

using namespace mdlm;

namespace {

// A model shape the library runs: the preset at batch B and length T.
struct ModelShape {
  const char* name;
  DiTConfig cfg;
  std::int64_t batch, seq;
};

std::vector<ModelShape> model_shapes() {
  std::vector<ModelShape> out;
  out.push_back({"small B=32 T=1024 V=50258", DiTConfig::preset("small", 50258), 32, 1024});
  out.push_back({"LM1B small B=256 T=128 V=30522", DiTConfig::preset("small", 30522), 256, 128});
  out.push_back({"medium B=32 T=1024 V=50258", DiTConfig::preset("medium", 50258), 32, 1024});
  out.push_back({"tiny B=2 T=128 V=50258", DiTConfig::preset("tiny", 50258), 2, 128});
  for (std::int64_t t : {2048, 4096, 8192}) out.push_back({"small long", DiTConfig::preset("small", 50258), 8, t});
  out.push_back({"main job bytes B=16 T=128", [] {
                   DiTConfig c;
                   c.vocab = 260, c.hidden = 128, c.blocks = 4, c.heads = 4;
                   return c;
                 }(),
                 16, 128});
  return out;
}

// Every kernel launch of a training step, sampling and the optimizer at this shape, with the
// sizes the ops pass (the output head on every row: the trimmed head uses fewer).
std::vector<LaunchConfig> model_launches(const ModelShape& m) {
  const std::int64_t b = m.batch, t = m.seq, rows = b * t, c = m.cfg.hidden, v = m.cfg.vocab;
  const std::int64_t mlp = m.cfg.mlp_ratio * c, cond = m.cfg.cond_dim, freq = m.cfg.freq_dim;
  const std::int64_t params = DiT(m.cfg).layout().buffer_elements();
  std::vector<LaunchConfig> l;
  l.push_back(launches::embedding_forward(rows * c));
  l.push_back(launches::embedding_iota_rows(rows));
  l.push_back(launches::embedding_backward_runs(rows));
  // Column sums: every bias gradient (the head's too, over all rows), LayerNorm dw; per sequence:
  // dshift/dscale and the gate gradients. Stage 1 with fp32 and fp64 accumulators, then stage 2.
  std::vector<ColumnReduceShape> sums;
  for (std::int64_t cols : {c, 3 * c, mlp, 6 * c, 2 * c, v, cond}) sums.push_back(ColumnReduceShape::plain(rows, cols));
  sums.push_back(ColumnReduceShape::plain(b, 6 * c));  // the adaLN Linear's bias: one row per sequence
  sums.push_back(ColumnReduceShape::per_sequence(rows, c, t));
  for (const ColumnReduceShape& s : sums) {
    l.push_back(launches::column_reduce_partials(s, sizeof(float)));
    l.push_back(launches::column_reduce_partials(s, sizeof(double)));
    l.push_back(launches::column_reduce_finish(s));
  }
  l.push_back(launches::gelu_backward(rows * mlp));
  l.push_back(launches::silu_forward(b * cond));
  l.push_back(launches::silu_backward(b * cond));
  l.push_back(launches::gated_residual_forward(rows * c));
  l.push_back(launches::gated_residual_backward(rows * c));
  l.push_back(launches::rope_table(std::min(m.seq, rows) * (c / m.cfg.heads / 2)));
  l.push_back(launches::rope_rotate(rows * (c / m.cfg.heads / 2)));
  l.push_back(launches::rope_copy_v(rows * c));
  l.push_back(launches::timestep_embedding(b * freq));
  l.push_back(launches::gather_rows(rows * c));
  l.push_back(launches::scatter_add_rows(rows * c));
  l.push_back(launches::layernorm_forward(rows));
  l.push_back(launches::layernorm_backward_dx(rows));
  l.push_back(launches::residual_layernorm_forward(rows));
  l.push_back(launches::residual_layernorm_backward_rows(rows));
  const auto s = cuda_detail::attention_shape(rows, 3 * c, t, m.cfg.heads, false);
  l.push_back(launches::attention_forward(s, true));
  l.push_back(launches::attention_forward(s, false));  // inference: scores in shared memory
  l.push_back(launches::attention_backward_dv(s));
  l.push_back(launches::attention_backward_ds(s));
  l.push_back(launches::attention_backward_dqk(s));
  // Flash attention (what the models run): bf16 on tensor cores or SIMT, and fp32.
  const bool tensor_cores = cuda_detail::flash_uses_mma_head_dim<bf16>(s.d);
  for (bool tc : {tensor_cores, false}) {
    l.push_back(launches::flash_attention_forward<bf16>(s, tc));
    l.push_back(launches::flash_attention_backward_dkdv<bf16>(s, tc));
    l.push_back(launches::flash_attention_backward_dq<bf16>(s, tc));
  }
  l.push_back(launches::flash_attention_forward<float>(s, false));
  l.push_back(launches::flash_attention_backward_delta(s));
  l.push_back(launches::flash_attention_backward_dkdv<float>(s, false));
  l.push_back(launches::flash_attention_backward_dq<float>(s, false));
  l.push_back(launches::absorbing_mask(rows));
  l.push_back(launches::subs_prepare(rows));
  l.push_back(launches::partition_iota_rows(rows));
  l.push_back(launches::gather_row_targets(rows));
  l.push_back(launches::ar_prepare(rows));
  l.push_back(launches::cross_entropy_rows(rows));
  l.push_back(launches::sum_rows_ordered());
  l.push_back(launches::cross_entropy_grad(rows));
  l.push_back(launches::sum_of_squares_partial());
  l.push_back(launches::sum_partials());
  l.push_back(launches::adamw_update(params));
  l.push_back(launches::ema_update(params));
  l.push_back(launches::step_status_add_loss());
  l.push_back(launches::step_status_finish());
  l.push_back(launches::sample_step(rows));
  l.push_back(launches::confidence_candidates(rows));
  l.push_back(launches::confidence_select(b));
  l.push_back(launches::first_hit_step(b));
  l.push_back(launches::argmax_masked(rows));
  l.push_back(launches::loop_begin_step());
  l.push_back(launches::loop_advance());
  for (std::int64_t cols : {3 * c, mlp, c, v}) {
    l.push_back(launches::gemm_scale(rows, cols));
    l.push_back(launches::gemm_epilogue(rows, cols));
  }
  l.push_back(launches::gemm_bias_grad(v));
  return l;
}

// A fake device address (never dereferenced: descriptors only record pointers).
template <class T>
T* fake_pointer(std::uintptr_t offset = 0) {
  return reinterpret_cast<T*>((std::uintptr_t{1} << 32) + offset);
}

}  // namespace

// ---- launch configurations -------------------------------------------------------------------

TEST_CASE("every kernel launch fits the device limits at every model shape") {
  for (const ModelShape& m : model_shapes()) {
    const auto launches = model_launches(m);
    CHECK(launches.size() > 40);
    for (const LaunchConfig& c : launches) {
      INFO(m.name, " T=", m.seq, ": ", c.kernel, " grid ", c.grid.x, "x", c.grid.y, "x", c.grid.z, " block ", c.block.x,
           " smem ", c.static_smem, "+", c.dynamic_smem);
      CHECK_NOTHROW(check_launch(c));
      CHECK(c.grid.x >= 1);  // no shape here is empty
      // Kernels without a grid-stride loop must be covered by the grid exactly.
      CHECK(c.grid.x * c.block.x > 0);
    }
  }
}

TEST_CASE("fused residual + LayerNorm: a warp per row in blocks of whole warps; 16-byte vectors at every model width") {
  for (const ModelShape& m : model_shapes()) {
    const std::int64_t rows = m.batch * m.seq, c = m.cfg.hidden;
    CAPTURE(m.name);
    for (const LaunchConfig& l : {launches::residual_layernorm_forward(rows), launches::residual_layernorm_backward_rows(rows)}) {
      CHECK_NOTHROW(check_launch(l));
      CHECK(l.block.x % 32 == 0);
      CHECK(l.grid.x * l.block.x >= rows * 32);         // a warp for every row
      CHECK((l.grid.x - 1) * l.block.x < rows * 32);    // and no block without a row
      CHECK(l.static_smem + l.dynamic_smem == 0);
    }
    // The model's operands: activations (B*T, d), the adaLN chunks (B, d) at ld 6d (2d in the
    // output layer), the norm weight (d); arena and parameter buffers are 256-byte aligned.
    auto aligned = [&](std::int64_t elem_bytes, std::int64_t offset_elems) {
      return static_cast<const void*>(fake_pointer<char>(static_cast<std::uintptr_t>(offset_elems * elem_bytes)));
    };
    for (std::int64_t chunk = 0; chunk < 6; ++chunk) {
      CHECK(cuda_detail::vector_rows_ok<float>(c, {{aligned(4, 0), c}, {aligned(4, chunk * c), 6 * c}, {aligned(4, 0), 0}}));
      CHECK(cuda_detail::vector_rows_ok<bf16>(c, {{aligned(2, 0), c}, {aligned(2, chunk * c), 6 * c}, {aligned(2, 0), 0}}));
    }
  }
  CHECK(cuda_detail::kVec16<float> == 4);
  CHECK(cuda_detail::kVec16<bf16> == 8);
  // The scalar fallback: a width, a leading dimension or a pointer off the 16-byte grid.
  CHECK_FALSE(cuda_detail::vector_rows_ok<float>(33, {{fake_pointer<float>(), 33}}));
  CHECK_FALSE(cuda_detail::vector_rows_ok<bf16>(36, {{fake_pointer<bf16>(), 36}}));  // 36 % 8 != 0
  CHECK(cuda_detail::vector_rows_ok<float>(36, {{fake_pointer<float>(), 36}}));
  CHECK_FALSE(cuda_detail::vector_rows_ok<float>(32, {{fake_pointer<float>(), 34}}));
  CHECK_FALSE(cuda_detail::vector_rows_ok<float>(32, {{fake_pointer<float>(4), 32}}));
  CHECK(cuda_detail::vector_rows_ok<float>(32, {{fake_pointer<float>(16), 32}, {nullptr, 3}}));  // absent views do not count
}

TEST_CASE("one-thread-per-item grids cover every item; grid-stride grids stay within the limit") {
  const std::int64_t n = (std::int64_t{1} << 33) + 7;  // more threads than a 32-bit count holds
  const LaunchConfig each = launch_detail::one_thread_each("k", n);
  CHECK(each.grid.x * each.block.x >= n);
  CHECK((each.grid.x - 1) * each.block.x < n);
  CHECK_NOTHROW(check_launch(each));
  const LaunchConfig stride = launch_detail::grid_stride("k", std::int64_t{1} << 45);
  CHECK(stride.grid.x == 2147483647);
  CHECK_NOTHROW(check_launch(stride));
  CHECK(launch_detail::one_thread_each("k", 0).empty());  // nothing to do: launch() issues nothing
  CHECK_NOTHROW(check_launch(launch_detail::one_thread_each("k", 0)));
}

TEST_CASE("column reduction launches: a block per (segment, row block, stripe), 32 x 8 threads, the limits") {
  for (const ColumnReduceShape& s : {ColumnReduceShape::plain(1, 1), ColumnReduceShape::plain(257, 33),
                                     ColumnReduceShape::plain(32768, 50258), ColumnReduceShape::per_sequence(8 * 8192, 768, 8192),
                                     ColumnReduceShape::per_sequence(256 * 128, 4608, 128),
                                     ColumnReduceShape::per_sequence(5, 7, 1)}) {
    CAPTURE(s.segments);
    CAPTURE(s.segment_rows);
    CAPTURE(s.cols);
    const LaunchConfig p = launches::column_reduce_partials(s, sizeof(float));
    CHECK_NOTHROW(check_launch(p));
    CHECK(p.grid.x == s.segments * ((s.segment_rows + kReduceTileRows - 1) / kReduceTileRows));
    CHECK(p.grid.y * kReduceCols >= s.cols);
    CHECK((p.grid.y - 1) * kReduceCols < s.cols);
    CHECK(p.block.x == 32);
    CHECK(p.block.y == kReduceWarps);
    CHECK(p.static_smem == sizeof(float) * 32 * kReduceWarps);
    CHECK(launches::column_reduce_partials(s, sizeof(double)).static_smem == sizeof(double) * 32 * kReduceWarps);
    const LaunchConfig f = launches::column_reduce_finish(s);
    CHECK_NOTHROW(check_launch(f));
    CHECK(f.grid.x * f.block.x >= s.segments * s.cols);
    // Scratch: a partial per (segment, row block, column).
    CHECK(s.partials() == p.grid.x * s.cols);
  }
  // Empty reductions issue no stage 1 (stage 2 still writes the zero sums).
  CHECK(launches::column_reduce_partials(ColumnReduceShape::plain(0, 10), 4).empty());
  CHECK(launches::column_reduce_partials(ColumnReduceShape::plain(10, 0), 4).empty());
  CHECK(launches::column_reduce_finish(ColumnReduceShape::plain(0, 10)).grid.x == 1);
  // More stripes than grid.y holds is an error naming the kernel, not a failed launch.
  const auto wide = ColumnReduceShape::plain(4, 65536 * std::int64_t{kReduceCols});
  CHECK_THROWS_WITH_AS(check_launch(launches::column_reduce_partials(wide, 4)), doctest::Contains("column_reduce_partials"),
                       Error);
  CHECK_NOTHROW(check_launch(launches::column_reduce_partials(ColumnReduceShape::plain(4, 65535 * std::int64_t{kReduceCols}), 4)));
  // The embedding backward: a block per row, whole warps over the columns.
  const LaunchConfig e = launches::embedding_backward_runs(32 * 1024);
  CHECK_NOTHROW(check_launch(e));
  CHECK(e.grid.x == 32 * 1024);
  CHECK(e.block.x % 32 == 0);
  CHECK(launches::embedding_backward_runs(0).empty());
  CHECK(cuda_detail::id_bits(2) == 1);
  CHECK(cuda_detail::id_bits(50258) == 16);
  CHECK(cuda_detail::id_bits(65536) == 16);
  CHECK(cuda_detail::id_bits(65537) == 17);
  CHECK(cuda_detail::id_bits(1) == 1);
}

TEST_CASE("shapes the kernels cannot take are mdlm::Errors naming the kernel") {
  auto message = [](const LaunchConfig& c) {
    try {
      check_launch(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // Inference attention keeps a row's scores in shared memory: 16384 floats are 64 KiB.
  const auto long_seq = cuda_detail::attention_shape(16384, 3 * 768, 16384, 12, false);
  CHECK(message(launches::attention_forward(long_seq, false)).find("attention_forward") != std::string::npos);
  CHECK(message(launches::attention_forward(long_seq, true)).empty());  // saved probabilities: no scratch
  // dS keeps dP of a row in shared memory. 12288 floats are exactly 48 KiB of dynamic memory: the
  // old check (dynamic <= 48 KiB) let it through, but the block reduction's static memory
  // comes on top, so the launch would fail.
  const auto at_limit = cuda_detail::attention_shape(12288, 3 * 768, 12288, 12, false);
  const LaunchConfig ds = launches::attention_backward_ds(at_limit);
  CHECK(ds.dynamic_smem == 48 * 1024);
  CHECK(ds.static_smem > 0);
  const std::string ds_message = message(ds);
  CHECK(ds_message.find("attention_backward_ds") != std::string::npos);
  CHECK(ds_message.find("static") != std::string::npos);
  CHECK(message(launches::attention_backward_ds(cuda_detail::attention_shape(8192, 3 * 768, 8192, 12, false))).empty());

  LaunchConfig c = launch_detail::grid_stride("wide", 100);
  c.grid.y = 65536;
  CHECK(message(c).find("grid.y = 65536") != std::string::npos);
  c.grid.y = 1;
  c.grid.z = 70000;
  CHECK(message(c).find("grid.z = 70000") != std::string::npos);
  c.grid.z = 1;
  c.grid.x = std::int64_t{1} << 31;
  CHECK(message(c).find("grid.x") != std::string::npos);
  LaunchConfig big = launch_detail::block_each("big_block", 4, 2048, 0);
  CHECK(message(big).find("big_block: block 2048x1x1") != std::string::npos);
  big.block = Dim3{64, 32, 1};
  CHECK(message(big).find("2048 threads per block") != std::string::npos);
  LaunchConfig ragged = launch_detail::block_each("ragged", 4, 100, 0);
  CHECK(message(ragged).find("whole number of warps") != std::string::npos);
}

TEST_CASE("flash attention: head dimensions and lengths the kernels cannot take are mdlm::Errors naming them") {
  auto message = [](auto&& make) {
    try {
      check_launch(make());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto shape = [](std::int64_t seq, std::int64_t heads, std::int64_t d) {
    return cuda_detail::attention_shape(2 * seq, 3 * heads * d, seq, heads, false);
  };
  // Head dimensions: up to 128 for bf16, up to 64 for fp32 (the tiles' shared memory), never 0.
  for (std::int64_t d : {1, 8, 24, 64, 100, 128}) {
    CAPTURE(d);
    CHECK(message([&] { return launches::flash_attention_forward<bf16>(shape(1024, 12, d), false); }).empty());
    CHECK(message([&] { return launches::flash_attention_backward_dkdv<bf16>(shape(1024, 12, d), false); }).empty());
    CHECK(message([&] { return launches::flash_attention_backward_dq<bf16>(shape(1024, 12, d), false); }).empty());
  }
  for (std::int64_t d : {1, 32, 64}) {
    CAPTURE(d);
    CHECK(message([&] { return launches::flash_attention_forward<float>(shape(1024, 12, d), false); }).empty());
    CHECK(message([&] { return launches::flash_attention_backward_dkdv<float>(shape(1024, 12, d), false); }).empty());
  }
  const std::string wide = message([&] { return launches::flash_attention_forward<bf16>(shape(64, 2, 256), false); });
  CHECK(wide.find("head dimension 256") != std::string::npos);
  CHECK(wide.find("flash_forward_simt") != std::string::npos);
  CHECK(message([&] { return launches::flash_attention_backward_dq<bf16>(shape(64, 2, 129), false); }).find("head dimension 129") !=
        std::string::npos);
  const std::string f32 = message([&] { return launches::flash_attention_backward_dkdv<float>(shape(64, 2, 128), false); });
  CHECK(f32.find("head dimension 128") != std::string::npos);
  CHECK(f32.find("4-byte") != std::string::npos);
  // The tensor-core forward: bf16 at D = 64 only; its tiles are static shared memory.
  CHECK(cuda_detail::flash_uses_mma_head_dim<bf16>(64));
  CHECK_FALSE(cuda_detail::flash_uses_mma_head_dim<bf16>(32));
  CHECK_FALSE(cuda_detail::flash_uses_mma_head_dim<float>(64));
  const LaunchConfig mma = launches::flash_attention_forward<bf16>(shape(1024, 12, 64), true);
  CHECK(mma.static_smem == sizeof(cuda_kernels::FlashMmaShared));
  CHECK(mma.block.x == 128);
  CHECK(mma.grid.x == 2 * 12);
  CHECK(mma.grid.y == 1024 / 64);
  CHECK_NOTHROW(check_launch(mma));
  // Sequence length: blocks of 64 rows on grid.y (at most 65535), so T up to 65535 * 64.
  CHECK(message([&] { return launches::flash_attention_forward<bf16>(shape(65535 * 64, 1, 64), true); }).empty());
  const std::string longest = message([&] { return launches::flash_attention_forward<bf16>(shape(65535 * 64 + 1, 1, 64), true); });
  CHECK(longest.find("flash_forward_mma_d64: grid.y = 65536") != std::string::npos);
  // The SIMT backward's static row statistics are counted with its dynamic tiles.
  for (bool backward_dq : {false, true}) {
    const LaunchConfig c = backward_dq ? launches::flash_attention_backward_dq<bf16>(shape(1024, 12, 64), true)
                                       : launches::flash_attention_backward_dkdv<bf16>(shape(1024, 12, 64), true);
    CHECK(c.static_smem == sizeof(cuda_kernels::FlashMmaBackwardShared));
    CHECK(c.dynamic_smem == 0);
    CHECK_NOTHROW(check_launch(c));
  }
  const LaunchConfig dkdv = launches::flash_attention_backward_dkdv<bf16>(shape(1024, 12, 128), false);
  CHECK(dkdv.static_smem == sizeof(cuda_kernels::FlashRowStats));
  CHECK(dkdv.dynamic_smem == 2 * 64 * 128 * sizeof(bf16));
}

TEST_CASE("static shared memory of the row kernels is counted from their shared-storage types") {
  // The sampler's row kernels hold their histograms, race scratch and reductions in RowShared.
  const LaunchConfig s = launches::sample_step(16 * 1024);
  CHECK(s.static_smem == sizeof(cuda_kernels::RowShared));
  CHECK(s.static_smem > 256 * (4 + 8) + 256 * (8 + 4));
  CHECK(s.static_smem + s.dynamic_smem <= 48 * 1024);
  const LaunchConfig a = launches::attention_forward(cuda_detail::attention_shape(1024, 3 * 768, 1024, 12, false), false);
  CHECK(a.static_smem == sizeof(cuda_kernels::AttentionShared));
  CHECK(a.dynamic_smem == 1024 * sizeof(float));
}

// ---- block reductions --------------------------------------------------------------------------

TEST_CASE("block reductions are typed: a 64-bit integer sum never passes through float") {
  using cuda_detail::MaxOp;
  using cuda_detail::SumOp;
  using U = unsigned long long;
  // The old identity `lane < warps ? partial[lane] : (Max ? -INFINITY : C(0))` had type float
  // for every C: the expression below is that expression for C = unsigned long long.
  U partial = (U{1} << 40) + 1;
  const bool lane_active = true, is_max = false;
  auto old_identity = lane_active ? partial : (is_max ? -INFINITY : U(0));
  static_assert(std::is_same_v<decltype(old_identity), float>, "the bug: the reduction ran in float");
  CHECK(static_cast<U>(old_identity) != partial);  // 2^40 + 1 is not a float
  // The reducer's types: identities and storage in the element type.
  static_assert(std::is_same_v<decltype(SumOp::identity<U>()), U>);
  static_assert(std::is_same_v<decltype(MaxOp::identity<U>()), U>);
  static_assert(std::is_same_v<decltype(MaxOp::identity<float>()), float>);
  static_assert(std::is_same_v<decltype(cuda_detail::BlockShared<U, 256>{}.result), U>);
  CHECK(SumOp::identity<U>() == 0);
  CHECK(MaxOp::identity<U>() == 0);
  CHECK(MaxOp::identity<long long>() == std::numeric_limits<long long>::lowest());
  CHECK(MaxOp::identity<float>() == -std::numeric_limits<float>::infinity());
  CHECK(SumOp{}(partial, partial) == 2 * partial);
  CHECK(MaxOp{}(partial, partial + 1) == partial + 1);
  CHECK(MaxOp{}(1.0f, NAN) == 1.0f);  // fmaxf: a NaN operand loses
}

// ---- cuBLASLt descriptors and preferences ---------------------------------------------------

template <cublasLtMatmulPreferenceAttributes_t A>
void check_pref_size(cublasLtMatmulPreference_t pref) {
  std::size_t written = 0;
  REQUIRE(cublasLtMatmulPreferenceGetAttribute(pref, A, nullptr, 0, &written) == CUBLAS_STATUS_SUCCESS);
  INFO("preference attribute ", static_cast<int>(A));
  CHECK(written == sizeof(typename LtPrefAttr<A>::type));
}
template <cublasLtMatmulDescAttributes_t A>
void check_desc_size(cublasLtMatmulDesc_t desc) {
  std::size_t written = 0;
  REQUIRE(cublasLtMatmulDescGetAttribute(desc, A, nullptr, 0, &written) == CUBLAS_STATUS_SUCCESS);
  INFO("descriptor attribute ", static_cast<int>(A));
  CHECK(written == sizeof(typename LtDescAttr<A>::type));
}

TEST_CASE("every cuBLASLt attribute the library sets has the size cuBLASLt declares") {
  cublasLtMatmulPreference_t pref = nullptr;
  REQUIRE(cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS);
  check_pref_size<CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES>(pref);
  check_pref_size<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES>(pref);
  check_pref_size<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES>(pref);
  check_pref_size<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES>(pref);
  check_pref_size<CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES>(pref);
  // The bug this guards: an 8-byte alignment value is refused (so every plan threw).
  const std::uint64_t wide = 16;
  CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &wide, sizeof wide) ==
        CUBLAS_STATUS_INVALID_VALUE);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatmulDesc_t desc = nullptr;
  REQUIRE(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  check_desc_size<CUBLASLT_MATMUL_DESC_TRANSA>(desc);
  check_desc_size<CUBLASLT_MATMUL_DESC_TRANSB>(desc);
  check_desc_size<CUBLASLT_MATMUL_DESC_EPILOGUE>(desc);
  check_desc_size<CUBLASLT_MATMUL_DESC_BIAS_POINTER>(desc);
  check_desc_size<CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER>(desc);
  check_desc_size<CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD>(desc);
  cublasLtMatmulDescDestroy(desc);
}

// The three GEMMs of a Linear layer (forward, dX, dW) at `rows` rows, as the ops issue them.
template <class TIn, class TOut>
int describe_linear(std::int64_t rows, std::int64_t in, std::int64_t out, bool bias, bool gelu) {
  int built = 0;
  const compute_t<TOut> alpha = 1, beta = 0;
  auto describe = [&](Op op_a, MatrixView<const TIn, Cuda> a, Op op_b, MatrixView<const TIn, Cuda> b,
                      MatrixView<TOut, Cuda> c, GemmEpilogue<TOut, Cuda> epi) {
    const GemmDims d = detail::check_gemm(op_a, a, op_b, b, c, epi, 0.0);
    const LtProblem plain = lt_problem(op_a, a, op_b, b, c, d, &alpha, &beta);
    const LtProblem fused = lt_with_epilogue(plain, epi);
    INFO("rows ", rows, " in ", in, " out ", out, " epilogue ", to_string(epi.kind));
    for (const LtProblem* p : {&plain, &fused}) {
      LtDescriptors desc;
      REQUIRE_NOTHROW(desc = lt_describe(*p, LtGemm::kWorkspaceBytes));
      std::uint32_t align = 0;
      std::size_t written = 0;
      REQUIRE(cublasLtMatmulPreferenceGetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align,
                                                   sizeof align, &written) == CUBLAS_STATUS_SUCCESS);
      CHECK(align == lt_alignment(p->a));
      std::uint32_t epilogue = 0;
      REQUIRE(cublasLtMatmulDescGetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue,
                                             &written) == CUBLAS_STATUS_SUCCESS);
      CHECK(epilogue == static_cast<std::uint32_t>(p->epilogue));
      ++built;
    }
  };
  const MatrixView<const TIn, Cuda> x(fake_pointer<const TIn>(), rows, in), w(fake_pointer<const TIn>(1 << 20), out, in);
  const MatrixView<const TIn, Cuda> dy(fake_pointer<const TIn>(2 << 20), rows, out);
  MatrixView<TOut, Cuda> y(fake_pointer<TOut>(3 << 20), rows, out), dx(fake_pointer<TOut>(4 << 20), rows, in);
  MatrixView<TOut, Cuda> dw(fake_pointer<TOut>(5 << 20), out, in), pre(fake_pointer<TOut>(6 << 20), rows, out);
  const TOut* b = fake_pointer<const TOut>(7 << 20);
  TOut* db = fake_pointer<TOut>(8 << 20);
  auto forward = gelu ? GemmEpilogue<TOut, Cuda>::gelu_aux_bias(b, pre)
                      : bias ? GemmEpilogue<TOut, Cuda>::with_bias(b) : GemmEpilogue<TOut, Cuda>::none();
  describe(Op::N, x, Op::T, w, y, forward);
  describe(Op::N, dy, Op::N, w, dx, GemmEpilogue<TOut, Cuda>::none());
  describe(Op::T, dy, Op::N, x, dw, bias ? GemmEpilogue<TOut, Cuda>::with_bias_grad(db) : GemmEpilogue<TOut, Cuda>::none());
  if (gelu) describe(Op::N, x, Op::T, w, y, GemmEpilogue<TOut, Cuda>::dgelu(pre));  // the DGELU shape (rows x out)
  return built;
}

TEST_CASE("the descriptors, layouts and preferences of every GEMM of the model build without a device") {
  for (const ModelShape& m : model_shapes()) {
    const DiT model(m.cfg);
    int built = 0;
    for (const ParamSpec& s : model.layout().specs()) {
      if (s.shape.size() != 2) continue;
      const std::int64_t out = s.shape[0], in = s.shape[1];
      const bool bias = model.layout().find(s.name.substr(0, s.name.size() - 6) + "bias") >= 0;
      const bool gelu = s.name.find("mlp.0") != std::string::npos;
      for (std::int64_t rows : {m.batch, m.batch * m.seq, std::int64_t{121}}) {
        built += describe_linear<float, float>(rows, in, out, bias, gelu);
        built += describe_linear<bf16, bf16>(rows, in, out, bias, gelu);
        built += describe_linear<bf16, float>(rows, in, out, bias, gelu);
      }
    }
    INFO(m.name);
    CHECK(built > 100);
  }
}

TEST_CASE("GELU_AUX and DGELU epilogues are fused only with an aux leading dimension divisible by 8") {
  LtProblem p;
  p.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  p.aux = fake_pointer<float>();
  p.ldaux = 3072;
  CHECK(lt_epilogue_fusable(p));
  p.ldaux = 3071;
  CHECK_FALSE(lt_epilogue_fusable(p));
  p.epilogue = CUBLASLT_EPILOGUE_DGELU;
  CHECK_FALSE(lt_epilogue_fusable(p));
  p.ldaux = 3072;
  p.aux = fake_pointer<float>(4);  // aux pointer not 16-byte aligned
  CHECK_FALSE(lt_epilogue_fusable(p));
  p.epilogue = CUBLASLT_EPILOGUE_BIAS;  // no aux: nothing to check
  CHECK(lt_epilogue_fusable(p));
  CHECK(lt_alignment(fake_pointer<float>(0)) == 256);
  CHECK(lt_alignment(fake_pointer<float>(2)) == 2);
  CHECK(lt_alignment(fake_pointer<float>(48)) == 16);
}

namespace {
// The leading dimension a cuBLASLt matrix layout was built with.
std::int64_t layout_ld(cublasLtMatrixLayout_t layout) {
  std::int64_t ld = 0;
  std::size_t written = 0;
  REQUIRE(cublasLtMatrixLayoutGetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_LD, &ld, sizeof ld, &written) ==
          CUBLAS_STATUS_SUCCESS);
  CHECK(written == sizeof ld);
  return ld;
}
}  // namespace

TEST_CASE("the output head's logits at V = 50258 get ld 50304: 16-byte-aligned rows in all three head GEMMs' layouts") {
  const DiT model(DiTConfig::preset("small", 50258));
  const std::int64_t v = model.config().vocab, d = model.config().hidden, ld = model.head_ld<Cuda>();
  CHECK(kHeadLdMultiple<Cuda> == 128);
  CHECK(ld == 50304);
  CHECK(v * static_cast<std::int64_t>(sizeof(bf16)) % 16 != 0);  // why: unpadded rows are 100516 bytes
  CHECK(ld * static_cast<std::int64_t>(sizeof(bf16)) % 16 == 0);
  CHECK(ld * static_cast<std::int64_t>(sizeof(float)) % 16 == 0);
  for (std::int64_t rows : {std::int64_t{128}, std::int64_t{32 * 1024}}) {
    CAPTURE(rows);
    const float alpha = 1, beta = 0;
    // As LinearOp issues them: y = h W^T + b (y padded), dh = dy W and dW = dy^T h (dy the
    // cross-entropy's in-place gradient: the logits' memory and stride).
    const MatrixView<const bf16, Cuda> h(fake_pointer<const bf16>(), rows, d), w(fake_pointer<const bf16>(1 << 20), v, d);
    MatrixView<bf16, Cuda> y(fake_pointer<bf16>(256u << 20), rows, v, ld), dh(fake_pointer<bf16>(4u << 20), rows, d);
    MatrixView<float, Cuda> dw(fake_pointer<float>(8u << 20), v, d);
    const MatrixView<const bf16, Cuda> dy(y);
    const bf16* b = fake_pointer<const bf16>(12u << 20);
    {  // forward: the logits are C (column-major: m = V, n = rows, ldc = ld)
      const GemmEpilogue<bf16, Cuda> epi = GemmEpilogue<bf16, Cuda>::with_bias(b);
      const GemmDims g = detail::check_gemm(Op::N, h, Op::T, w, y, epi, 0.0);
      const LtProblem p = lt_with_epilogue(lt_problem(Op::N, h, Op::T, w, y, g, &alpha, &beta), epi);
      CHECK(p.ldc == ld);
      CHECK(p.m == v);
      LtDescriptors desc;
      REQUIRE_NOTHROW(desc = lt_describe(p, LtGemm::kWorkspaceBytes));
      CHECK(layout_ld(desc.c_layout) == ld);
    }
    {  // dh = dy W: dy is B' (column-major V x rows, ldb = ld)
      const GemmDims g = detail::check_gemm(Op::N, dy, Op::N, w, dh, GemmEpilogue<bf16, Cuda>{}, 0.0);
      const LtProblem p = lt_problem(Op::N, dy, Op::N, w, dh, g, &alpha, &beta);
      CHECK(p.ldb == ld);
      CHECK(p.k == v);
      LtDescriptors desc;
      REQUIRE_NOTHROW(desc = lt_describe(p, LtGemm::kWorkspaceBytes));
      CHECK(layout_ld(desc.b_layout) == ld);
    }
    {  // dW = dy^T h, in fp32 (bf16-mixed parameter gradients): dy is B' again, transposed
      const MatrixView<const bf16, Cuda> hc(h);
      const GemmDims g = detail::check_gemm(Op::T, dy, Op::N, hc, dw, GemmEpilogue<float, Cuda>{}, 0.0);
      const LtProblem p = lt_problem(Op::T, dy, Op::N, hc, dw, g, &alpha, &beta);
      CHECK(p.ldb == ld);
      CHECK(p.n == v);
      CHECK(p.k == rows);
      LtDescriptors desc;
      REQUIRE_NOTHROW(desc = lt_describe(p, LtGemm::kWorkspaceBytes));
      CHECK(layout_ld(desc.b_layout) == ld);
      CHECK(layout_ld(desc.c_layout) == d);  // the weight's gradient stays unpadded (V, d)
    }
  }
}
