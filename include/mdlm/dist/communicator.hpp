#pragma once
// Communicators for data-parallel training: what the Trainer needs to run one optimizer step
// over several processes (ranks), each holding a slice of every global batch.
//
//   SingleProcess    one rank; every collective is a no-op (or a copy). The default: a build
//                    without MPI trains exactly as before.
//   MpiCommunicator  Host memory over MPI (dist/mpi.hpp; OpenMPI, launched by mpirun or srun).
//   NcclCommunicator CUDA device memory over NCCL, bootstrapped over MPI (dist/nccl.cuh).
//
// A communicator moves whole contiguous buffers (the ParamStore's one gradient buffer; for
// ZeRO-1 the parameter and optimizer buffers) in backend memory, and a few host scalars (token
// counts, loss sums, squared norms). Every collective is called by every rank in the same order.
//   all_reduce_sum(ctx, data, n)            data[0, n) = the sum over ranks, in place
//   start_all_reduce_sum(ctx, data, n)      the same, started: it runs while the caller goes on
//                                           (the backward pass computing other gradients);
//                                           data[0, n) is neither read nor written by the caller
//                                           until finish_all_reduces
//   finish_all_reduces(ctx)                 every started all-reduce is complete (Host) or
//                                           ordered before the context's later work (CUDA)
//   reduce_scatter_sum(ctx, send, recv, c)  send holds size() * c values; recv[0, c) = the sum
//                                           over ranks of send[rank() * c, (rank() + 1) * c)
//   all_gather(ctx, send, recv, c)          recv[k * c, (k + 1) * c) = rank k's send[0, c); send
//                                           may be recv + rank() * c (in place)
//   all_reduce_host_sum(values, n)          host doubles, summed in place
//   abort(message)                          prints "rank R: message" and ends the whole job
//                                           (every rank) with a non-zero exit code

#include <concepts>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "mdlm/core/bf16.hpp"
#include "mdlm/core/error.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

template <class C, class B>
concept Communicator = requires(C& c, B& ctx, float* f, double* d, bf16* h, std::int64_t n, const std::string& message) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  c.all_reduce_sum(ctx, f, n);
  c.all_reduce_sum(ctx, d, n);
  c.start_all_reduce_sum(ctx, f, n);
  c.start_all_reduce_sum(ctx, d, n);
  c.finish_all_reduces(ctx);
  c.reduce_scatter_sum(ctx, f, f, n);
  c.reduce_scatter_sum(ctx, d, d, n);
  c.all_gather(ctx, f, f, n);
  c.all_gather(ctx, d, d, n);
  c.all_gather(ctx, h, h, n);
  c.all_reduce_host_sum(d, n);
  c.abort(message);
};

// The sequences [first, first + count) of a global batch of `global` sequences that rank `rank`
// of `size` trains on: contiguous slices in rank order whose union is the whole batch; sizes
// differ by at most one.
struct BatchSlice {
  std::int64_t first = 0, count = 0, global = 0;

  static BatchSlice of(std::int64_t global, int rank, int size) {
    MDLM_CHECK(size > 0 && rank >= 0 && rank < size, "batch slice: rank ", rank, " of ", size);
    MDLM_CHECK(global >= size, "a global batch of ", global, " sequences cannot be split over ", size,
               " ranks (each needs at least one sequence): raise --batch");
    const auto at = [&](std::int64_t r) { return global * r / size; };
    return {at(rank), at(rank + 1) - at(rank), global};
  }
};

// One process: the collectives have nothing to exchange.
struct SingleProcess {
  int rank() const { return 0; }
  int size() const { return 1; }
  template <class B, class V>
  void all_reduce_sum(B&, V*, std::int64_t) {}
  template <class B, class V>
  void start_all_reduce_sum(B&, V*, std::int64_t) {}
  template <class B>
  void finish_all_reduces(B&) {}
  template <class B, class V>
  void reduce_scatter_sum(B& ctx, const V* send, V* recv, std::int64_t count) {
    if (send != recv) copy_elements(ctx, send, recv, count);
  }
  template <class B, class V>
  void all_gather(B& ctx, const V* send, V* recv, std::int64_t count) {
    if (send != recv) copy_elements(ctx, send, recv, count);
  }
  void all_reduce_host_sum(double*, std::int64_t) {}
  // One process has no job to end: the error goes to the caller like any other.
  [[noreturn]] void abort(const std::string& message) { MDLM_FAIL(message); }

 private:
  template <class B, class V>
  static void copy_elements(B& ctx, const V* from, V* to, std::int64_t count) {
    using Backend = std::remove_const_t<B>;
    copy(ctx, MatrixView<const V, Backend>(from, 1, count), MatrixView<V, Backend>(to, 1, count));
  }
};

static_assert(Communicator<SingleProcess, Host>);

}  // namespace mdlm
