// SyncBatchNorm2d: BatchNorm2d whose training statistics are taken over the batches of every
// process of a group, as torch.nn.SyncBatchNorm does for data-parallel training.
//
// A training forward computes this process's per-channel {count, mean, M2}, all-gathers them
// (3 float64 values per channel from each process), merges them in rank order (every process
// gets the same bits) and normalizes with the result; running statistics are updated from the
// global mean and unbiased variance. A training backward all-reduces the two per-channel sums
// grad_input needs (2 float64 values per channel); grad_weight and grad_bias stay this
// process's own, as in PyTorch (data-parallel training averages them with the other gradients).
// Eval mode is BatchNorm2d's (running statistics, no communication). Processes may have
// different batch sizes, including empty ones.
//
// Every training forward, and every training backward that computes grad_input, is a collective
// call: every process of the group makes it, in the same order. A call that fails on one
// process (a bad argument, a kernel error) fails on all of them with that process's message,
// and no process changes its state. Processes that make different calls (forward on one,
// backward on another; different num_features) get an error naming them rather than a hang,
// as long as each makes some call.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "bn2d/batchnorm2d.h"
#include "bn2d/tensor.h"

namespace bn2d {

// The collectives SyncBatchNorm2d needs over the processes of one group. Implementations:
// mpi_communicator() (bn2d/mpi.h, library bn2d::mpi) and nccl_communicator() (bn2d/nccl.h,
// library bn2d::nccl); an application can wrap its own (Gloo, a test double). Methods throw
// bn2d::Error on failure.
class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual std::string name() const = 0;  // "mpi", "nccl", ...
    // Where all_gather and all_reduce_sum read and write: Device::CPU (host pointers) or a GPU
    // (that API's device pointers, e.g. CUdeviceptr values for Device::Cuda). A module on
    // another device stages the values through the host.
    virtual Device memory() const = 0;
    // Control messages, host memory: `bytes` from every process into `recv` (size() * bytes),
    // in rank order.
    virtual void all_gather_bytes(const void *send, void *recv, size_t bytes) = 0;
    // Statistics, in memory(): `count` doubles from every process into `recv` (size() * count),
    // in rank order.
    virtual void all_gather(const double *send, double *recv, size_t count) = 0;
    // Element-wise sum over the processes, in place, in memory().
    virtual void all_reduce_sum(double *data, size_t count) = 0;
};

class SyncBatchNorm2d : public BatchNorm2d {
public:
    SyncBatchNorm2d(int64_t num_features, std::shared_ptr<Communicator> communicator,
                    const Options &options = {});
    // torch.nn.SyncBatchNorm.convert_sync_batchnorm: takes over a module's options and state
    // (parameters, running statistics, gradients, device).
    static SyncBatchNorm2d convert(BatchNorm2d &&module,
                                   std::shared_ptr<Communicator> communicator);

    Communicator &communicator() const;

private:
    class GroupStatistics;  // the module's Statistics: runtime/src/sync.cpp
    explicit SyncBatchNorm2d(BatchNorm2d &&module);
};

}  // namespace bn2d
