#pragma once
// MPI for data-parallel training on the Host backend, and the bootstrap of NCCL (dist/nccl.cuh).
// Needs <mpi.h> (Debian/Ubuntu: libopenmpi-dev) and linking MPI (CMake: MPI::MPI_CXX).
//
//   MpiSession session(argc, argv);     // MPI_Init when the process was started by mpirun/srun
//   MpiCommunicator comm(session);      // MPI_COMM_WORLD; one rank when MPI is not initialised
//   trainer.run(ctx, cfg, comm);
//
// A program started without a launcher does not initialise MPI at all (it runs as one rank),
// so the same binary trains with or without mpirun.

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // the C API only: the deprecated C++ bindings are not used
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "mdlm/dist/communicator.hpp"

namespace mdlm {

// Initialises MPI for the lifetime of the object when the process was started by an MPI launcher
// (mpirun/mpiexec of Open MPI or MPICH, Slurm's srun with PMI or PMIx), and finalises it at the
// end. Without a launcher MPI stays uninitialised and the program is one rank.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv) {
    int already = 0;
    MPI_Initialized(&already);
    if (already || !launched_by_mpi()) return;
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    owns_ = true;
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }

  static bool active() {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
  }

  // The environment variables the launchers set in every rank they start.
  static bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE"}) {
      const char* s = std::getenv(v);
      if (s != nullptr && *s != 0) return true;
    }
    return false;
  }

 private:
  bool owns_ = false;
};

// The MPI datatype of a value type that is reduced (sums run in that type).
template <class V>
MPI_Datatype mpi_datatype() {
  if constexpr (std::is_same_v<V, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<V, float>) return MPI_FLOAT;
  else static_assert(sizeof(V) == 0, "mpi_datatype: sums run over float or double only");
}

// Host-memory collectives over an MPI communicator (MPI_COMM_WORLD by default). When MPI is not
// initialised it is one rank and makes no MPI call.
class MpiCommunicator {
 public:
  explicit MpiCommunicator(const MpiSession&) : MpiCommunicator() {}
  MpiCommunicator() {
    if (!MpiSession::active()) return;
    comm_ = MPI_COMM_WORLD;
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The rank among the ranks of this node (which GPU a rank takes).
  int local_rank() const { return local_rank_; }
  bool distributed() const { return size_ > 1; }

  template <class V>
  void all_reduce_sum(const Host&, V* data, std::int64_t n) {
    if (!distributed()) return;
    for (std::int64_t at = 0; at < n; at += kMaxCount) {
      MPI_Allreduce(MPI_IN_PLACE, data + at, count_of(std::min(kMaxCount, n - at)), mpi_datatype<V>(), MPI_SUM, comm_);
    }
  }
  // Non-blocking (MPI_Iallreduce): started now, complete at finish_all_reduces. Each start also
  // tests the earlier ones, which lets MPI progress them while the backward pass runs.
  template <class V>
  void start_all_reduce_sum(const Host&, V* data, std::int64_t n) {
    if (!distributed()) return;
    for (std::int64_t at = 0; at < n; at += kMaxCount) {
      MPI_Request request;
      MPI_Iallreduce(MPI_IN_PLACE, data + at, count_of(std::min(kMaxCount, n - at)), mpi_datatype<V>(), MPI_SUM, comm_,
                     &request);
      pending_.push_back(request);
    }
    int done = 0;
    MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
  }
  void finish_all_reduces(const Host&) {
    if (pending_.empty()) return;
    MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE);
    pending_.clear();
  }
  template <class V>
  void reduce_scatter_sum(const Host& ctx, const V* send, V* recv, std::int64_t count) {
    if (!distributed()) return SingleProcess{}.reduce_scatter_sum(ctx, send, recv, count);
    MPI_Reduce_scatter_block(send, recv, count_of(count), mpi_datatype<V>(), MPI_SUM, comm_);
  }
  template <class V>
  void all_gather(const Host& ctx, const V* send, V* recv, std::int64_t count) {
    if (!distributed()) return SingleProcess{}.all_gather(ctx, send, recv, count);
    // Gathered as bytes (any value type, bf16 too), in units of one value.
    MPI_Datatype unit;
    MPI_Type_contiguous(static_cast<int>(sizeof(V)), MPI_BYTE, &unit);
    MPI_Type_commit(&unit);
    const void* from = send == recv + static_cast<std::int64_t>(rank_) * count ? MPI_IN_PLACE : static_cast<const void*>(send);
    MPI_Allgather(from, count_of(count), unit, recv, count_of(count), unit, comm_);
    MPI_Type_free(&unit);
  }
  void all_reduce_host_sum(double* values, std::int64_t n) { all_reduce_sum(Host{}, values, n); }
  void broadcast_bytes(void* data, std::int64_t bytes, int root) {
    if (distributed()) MPI_Bcast(data, count_of(bytes), MPI_BYTE, root, comm_);
  }

  // Prints "mdlm: error: rank R: message" and ends every rank of the job (MPI_Abort: the
  // launcher kills the others, so no rank waits on this one). One rank: an mdlm::Error.
  [[noreturn]] void abort(const std::string& message) {
    if (!distributed()) MDLM_FAIL(message);
    std::fprintf(stderr, "mdlm: error: rank %d: %s\n", rank_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(comm_, 2);
    std::abort();  // MPI_Abort does not return
  }

 private:
  static constexpr std::int64_t kMaxCount = std::int64_t{1} << 30;  // MPI counts are int
  static int count_of(std::int64_t n) {
    MDLM_CHECK(n >= 0 && n <= INT_MAX, "MPI: a message of ", n, " values exceeds MPI's int count");
    return static_cast<int>(n);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::vector<MPI_Request> pending_;  // started all-reduces
};

static_assert(Communicator<MpiCommunicator, Host> && Communicator<SingleProcess, Host>);

}  // namespace mdlm
