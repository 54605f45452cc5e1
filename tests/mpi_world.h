// MPI_COMM_WORLD for the SyncBatchNorm2d tests and benchmark (run under mpirun): this process's
// rank, the process count, a seed every process shares, and a communicator that counts bytes.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "bn2d/sync_batchnorm2d.h"

namespace bn2d::test {

inline int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
inline int world_size() {
    int p = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &p);
    return p;
}

// Rank 0 draws it (fresh inputs every run); every process derives the same values from it.
inline uint32_t shared_seed() {
    uint32_t seed = world_rank() == 0 ? std::random_device{}() : 0;
    MPI_Bcast(&seed, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
    return seed;
}

// Counts what the module asks of its communicator, and passes it on.
class CountingCommunicator final : public Communicator {
public:
    explicit CountingCommunicator(std::shared_ptr<Communicator> inner) : inner_(std::move(inner)) {}
    int rank() const override { return inner_->rank(); }
    int size() const override { return inner_->size(); }
    std::string name() const override { return inner_->name(); }
    Device memory() const override { return inner_->memory(); }
    void all_gather_bytes(const void *send, void *recv, size_t bytes) override {
        note(bytes);
        inner_->all_gather_bytes(send, recv, bytes);
    }
    void all_gather(const double *send, double *recv, size_t count) override {
        note(count * sizeof(double));
        inner_->all_gather(send, recv, count);
    }
    void all_reduce_sum(double *data, size_t count) override {
        note(count * sizeof(double));
        inner_->all_reduce_sum(data, count);
    }
    int64_t collectives = 0, bytes_sent = 0;

private:
    void note(size_t bytes) {
        ++collectives;
        bytes_sent += static_cast<int64_t>(bytes);
    }
    std::shared_ptr<Communicator> inner_;
};

}  // namespace bn2d::test
