#pragma once
// NCCL for data-parallel training on the CUDA backend (one GPU per rank), bootstrapped over MPI:
// rank 0 makes the NCCL unique id and broadcasts it over MPI, every rank joins with it.
// Needs <nccl.h> and libnccl (the CUDA toolkit's or the distribution's) and MPI (dist/mpi.hpp).
//
//   MpiSession session(&argc, &argv);
//   MpiCommunicator mpi(session);
//   Cuda ctx(NcclCommunicator::device_for(mpi));    // GPU = rank within the node % GPUs
//   NcclCommunicator comm(mpi, ctx);
//   trainer.run(ctx, cfg, comm);
//
// The collectives run on the communicator's own stream, ordered after the work already queued on
// the context's stream and before anything queued there afterwards (two events), with no host
// synchronization. A started all-reduce (start_all_reduce_sum: a bucket of final gradients,
// dist/gradient_buckets.hpp) waits only for the work queued so far on the context's stream, so
// it runs while the context's stream computes the gradients of earlier layers; the context's
// stream waits for all of them at finish_all_reduces. Long ranges go in NCCL calls of at most
// `bucket_bytes` (25 MiB by default, PyTorch DDP's bucket size).
// Host scalars (token counts, loss sums, squared norms) go over MPI.

#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/core/bf16.hpp"
#include "mdlm/dist/communicator.hpp"
#include "mdlm/dist/gradient_buckets.hpp"
#include "mdlm/dist/mpi.hpp"

#define MDLM_NCCL_CHECK(expr)                                                                              \
  do {                                                                                                     \
    ncclResult_t mdlm_nccl_status_ = (expr);                                                               \
    if (mdlm_nccl_status_ != ncclSuccess) {                                                                \
      ::mdlm::detail::throw_error(__FILE__, __LINE__, "NCCL error: ", ncclGetErrorString(mdlm_nccl_status_), \
                                  " in " #expr);                                                           \
    }                                                                                                      \
  } while (0)

namespace mdlm {

template <class V>
ncclDataType_t nccl_datatype() {
  if constexpr (std::is_same_v<V, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<V, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<V, bf16>) return ncclBfloat16;
  else static_assert(sizeof(V) == 0, "nccl_datatype: sums run over float, double or bf16");
}

class NcclCommunicator {
 public:
  static constexpr std::int64_t kDefaultBucketBytes = kGradientBucketBytes;

  // The GPU of this rank: its rank among the ranks of its node, modulo the node's GPUs.
  static int device_for(const MpiCommunicator& mpi) {
    const int n = Cuda::device_count();
    MDLM_CHECK(n > 0, "rank ", mpi.rank(), ": no CUDA device is present");
    return mpi.local_rank() % n;
  }

  // Every rank of `mpi` constructs it, with `ctx` on its own GPU. Under an MPI launcher NCCL is
  // set up even for one rank (so `mpirun -np 1` runs every collective through NCCL); without
  // one there is nothing to communicate and no NCCL call is made.
  NcclCommunicator(MpiCommunicator& mpi, Cuda& ctx, std::int64_t bucket_bytes = kDefaultBucketBytes)
      : mpi_(mpi), bucket_bytes_(bucket_bytes) {
    MDLM_CHECK(bucket_bytes > 0, "NCCL: bucket of ", bucket_bytes, " bytes");
    if (!MpiSession::active()) return;
    ncclUniqueId id{};
    if (mpi.rank() == 0) MDLM_NCCL_CHECK(ncclGetUniqueId(&id));
    mpi.broadcast_bytes(&id, static_cast<std::int64_t>(sizeof id), 0);
    MDLM_CUDA_CHECK(cudaSetDevice(ctx.device()));
    MDLM_NCCL_CHECK(ncclCommInitRank(&comm_, mpi.size(), id, mpi.rank()));
    MDLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MDLM_CUDA_CHECK(cudaEventCreateWithFlags(&queued_, cudaEventDisableTiming));
    MDLM_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (queued_ != nullptr) cudaEventDestroy(queued_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const { return mpi_.rank(); }
  int size() const { return mpi_.size(); }

  template <class V>
  void all_reduce_sum(Cuda& ctx, V* data, std::int64_t n) {
    start_all_reduce_sum(ctx, data, n);
    finish_all_reduces(ctx);
  }
  // On the communicator's stream, after the work queued so far on ctx's stream.
  template <class V>
  void start_all_reduce_sum(Cuda& ctx, V* data, std::int64_t n) {
    if (comm_ == nullptr) return;
    after_queued_work(ctx);
    const std::int64_t per_call = std::max<std::int64_t>(1, bucket_bytes_ / static_cast<std::int64_t>(sizeof(V)));
    for (std::int64_t at = 0; at < n; at += per_call) {
      MDLM_NCCL_CHECK(ncclAllReduce(data + at, data + at, static_cast<std::size_t>(std::min(per_call, n - at)),
                                    nccl_datatype<V>(), ncclSum, comm_, stream_));
    }
  }
  // ctx's later work waits for every collective queued on the communicator's stream.
  void finish_all_reduces(Cuda& ctx) {
    if (comm_ == nullptr) return;
    MDLM_CUDA_CHECK(cudaEventRecord(done_, stream_));
    MDLM_CUDA_CHECK(cudaStreamWaitEvent(ctx.stream(), done_, 0));
  }
  template <class V>
  void reduce_scatter_sum(Cuda& ctx, const V* send, V* recv, std::int64_t count) {
    if (comm_ == nullptr) return SingleProcess{}.reduce_scatter_sum(ctx, send, recv, count);
    on_own_stream(ctx, [&] {
      MDLM_NCCL_CHECK(ncclReduceScatter(send, recv, static_cast<std::size_t>(count), nccl_datatype<V>(), ncclSum, comm_, stream_));
    });
  }
  template <class V>
  void all_gather(Cuda& ctx, const V* send, V* recv, std::int64_t count) {
    if (comm_ == nullptr) return SingleProcess{}.all_gather(ctx, send, recv, count);
    on_own_stream(ctx, [&] {  // as bytes: any value type; in place when send == recv + rank * count
      MDLM_NCCL_CHECK(ncclAllGather(send, recv, static_cast<std::size_t>(count) * sizeof(V), ncclUint8, comm_, stream_));
    });
  }
  void all_reduce_host_sum(double* values, std::int64_t n) { mpi_.all_reduce_host_sum(values, n); }

  [[noreturn]] void abort(const std::string& message) {
    if (comm_ != nullptr) {
      ncclCommAbort(comm_);  // no rank stays blocked in a collective of this one
      comm_ = nullptr;
    }
    mpi_.abort(message);
  }

 private:
  // Runs `enqueue` (NCCL calls on stream_) after the work queued so far on ctx's stream, and
  // makes ctx's later work wait for it.
  template <class F>
  void on_own_stream(Cuda& ctx, F&& enqueue) {
    after_queued_work(ctx);
    enqueue();
    finish_all_reduces(ctx);
  }
  // The communicator's stream waits for the work queued so far on ctx's stream.
  void after_queued_work(Cuda& ctx) {
    MDLM_CUDA_CHECK(cudaEventRecord(queued_, ctx.stream()));
    MDLM_CUDA_CHECK(cudaStreamWaitEvent(stream_, queued_, 0));
  }

  MpiCommunicator& mpi_;
  std::int64_t bucket_bytes_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t queued_ = nullptr, done_ = nullptr;
};

static_assert(Communicator<NcclCommunicator, Cuda>);

}  // namespace mdlm
