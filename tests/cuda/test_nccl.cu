// NcclCommunicator (dist/nccl.cuh) on the GPUs of an MPI job: run as `mpirun -np N
// mdlm_tests_nccl` (N ranks, one GPU each; N = 1 on a single GPU). Every collective is checked
// against its definition: the all-reduce in many small buckets and in one, the reduce-scatter of
// the ZeRO-1 gradient shards, the all-gather of parameters (bf16, in place) and of fp32 state.
// Without a GPU the binary reports itself skipped (exit 77).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <vector>

#include "mdlm/cuda.cuh"
#include "mdlm/dist/nccl.cuh"

using namespace mdlm;

namespace {

// This rank's view of the job: MPI and this rank's GPU.
struct Job {
  MpiCommunicator mpi;
  Cuda ctx{NcclCommunicator::device_for(mpi)};
};

}  // namespace

TEST_CASE("NCCL all-reduce: the sum over ranks, in buckets of any size") {
  Job j;
  const int n_ranks = j.mpi.size(), rank = j.mpi.rank();
  for (std::int64_t bucket_bytes : {std::int64_t{64}, NcclCommunicator::kDefaultBucketBytes}) {
    NcclCommunicator comm(j.mpi, j.ctx, bucket_bytes);
    const std::int64_t n = 1000;
    std::vector<float> host(n);
    for (std::int64_t i = 0; i < n; ++i) host[static_cast<std::size_t>(i)] = static_cast<float>(i * (rank + 1));
    Buffer<float, Cuda> data = upload(j.ctx, host);
    comm.all_reduce_sum(j.ctx, data.data(), n);
    const std::vector<float> got = download(j.ctx, MatrixView<const float, Cuda>(data.data(), 1, n));
    const float ranks_sum = static_cast<float>(n_ranks * (n_ranks + 1) / 2);
    for (std::int64_t i = 0; i < n; ++i) REQUIRE(got[static_cast<std::size_t>(i)] == static_cast<float>(i) * ranks_sum);
  }
}

TEST_CASE("NCCL all-reduce in buckets started while the context's stream still writes other gradients") {
  Job j;
  const int n_ranks = j.mpi.size(), rank = j.mpi.rank();
  NcclCommunicator comm(j.mpi, j.ctx);
  const std::int64_t n = 1 << 16, part = 1 << 12;
  std::vector<float> host(n);
  for (std::int64_t i = 0; i < n; ++i) host[static_cast<std::size_t>(i)] = static_cast<float>((i % 977) * (rank + 1));
  Buffer<float, Cuda> staged = upload(j.ctx, host), grads(n);
  fill_zero(j.ctx, MatrixView<float, Cuda>(grads.data(), 1, n));
  GradientBuckets<NcclCommunicator, Cuda, float> buckets(comm, j.ctx, grads.data(), n, /*bucket_bytes=*/3 * part * 4);
  buckets.arm();
  for (std::int64_t end = n; end > 0; end -= part) {  // as a backward pass: the buffer's end is final first
    copy(j.ctx, MatrixView<const float, Cuda>(staged.data() + end - part, 1, part), MatrixView<float, Cuda>(grads.data() + end - part, 1, part));
    buckets.ready(end - part, end);  // its all-reduce waits for this copy, not for the copies queued after it
  }
  buckets.finish();
  CHECK(buckets.started().size() == 6);  // 5 buckets of 3 parts during the "backward pass", the last part after it
  const std::vector<float> got = download(j.ctx, MatrixView<const float, Cuda>(grads.data(), 1, n));
  const float ranks_sum = static_cast<float>(n_ranks * (n_ranks + 1) / 2);
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(got[static_cast<std::size_t>(i)] == static_cast<float>(i % 977) * ranks_sum);
}

TEST_CASE("NCCL reduce-scatter and all-gather: ZeRO-1 shards of gradients, parameters and state") {
  Job j;
  NcclCommunicator comm(j.mpi, j.ctx);
  const int n_ranks = j.mpi.size(), rank = j.mpi.rank();
  const std::int64_t shard = 256, n = shard * n_ranks;
  std::vector<float> grads(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) grads[static_cast<std::size_t>(i)] = static_cast<float>(i + rank);
  Buffer<float, Cuda> send = upload(j.ctx, grads), mine(shard);
  comm.reduce_scatter_sum(j.ctx, send.data(), mine.data(), shard);
  const std::vector<float> got = download(j.ctx, MatrixView<const float, Cuda>(mine.data(), 1, shard));
  for (std::int64_t i = 0; i < shard; ++i) {
    const std::int64_t g = rank * shard + i;  // sum over ranks r of (g + r)
    REQUIRE(got[static_cast<std::size_t>(i)] == static_cast<float>(g * n_ranks + n_ranks * (n_ranks - 1) / 2));
  }

  std::vector<bf16> values(static_cast<std::size_t>(n), bf16(0.0f));
  for (std::int64_t i = 0; i < shard; ++i) values[static_cast<std::size_t>(rank * shard + i)] = bf16(static_cast<float>(rank + 1));
  Buffer<bf16, Cuda> all = upload(j.ctx, values);
  comm.all_gather(j.ctx, all.data() + rank * shard, all.data(), shard);  // in place, as TrainStep::apply
  const std::vector<bf16> gathered = download(j.ctx, MatrixView<const bf16, Cuda>(all.data(), 1, n));
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(gathered[static_cast<std::size_t>(i)].to_float() == static_cast<float>(i / shard + 1));

  Buffer<float, Cuda> state = upload(j.ctx, std::vector<float>(static_cast<std::size_t>(shard), 0.5f * static_cast<float>(rank))),
                      whole(n);
  comm.all_gather(j.ctx, state.data(), whole.data(), shard);
  const std::vector<float> w = download(j.ctx, MatrixView<const float, Cuda>(whole.data(), 1, n));
  for (std::int64_t i = 0; i < n; ++i) REQUIRE(w[static_cast<std::size_t>(i)] == 0.5f * static_cast<float>(i / shard));

  double scalars[2] = {1.0, static_cast<double>(rank)};
  comm.all_reduce_host_sum(scalars, 2);
  CHECK(scalars[0] == n_ranks);
  CHECK(scalars[1] == n_ranks * (n_ranks - 1) / 2);
}

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  if (Cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device; the NCCL tests did not run\n");
    return 77;  // ctest SKIP_RETURN_CODE
  }
  if (!MpiSession::active()) {
    std::printf("SKIPPED: not started by mpirun/srun; NCCL is set up over MPI (run: mpirun -np 1 %s)\n", argv[0]);
    return 77;
  }
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}
