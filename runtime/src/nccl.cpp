// bn2d::nccl: the Communicator of SyncBatchNorm2d over an NCCL communicator (device memory).
#include "bn2d/nccl.h"

#include <string>

namespace bn2d {
namespace {

void check_nccl(ncclResult_t rc, const char *what) {
    if (rc != ncclSuccess)
        throw Error(std::string("nccl: ") + what + ": " + ncclGetErrorString(rc));
}
void check_cuda(cudaError_t rc, const char *what) {
    if (rc != cudaSuccess)
        throw Error(std::string("nccl: ") + what + ": " + cudaGetErrorString(rc));
}

class NcclCommunicator final : public Communicator {
public:
    NcclCommunicator(ncclComm_t comm, cudaStream_t stream) : comm_(comm), stream_(stream) {
        if (!comm) throw Error("nccl: the communicator is null");
        check_nccl(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
        check_nccl(ncclCommCount(comm_, &size_), "ncclCommCount");
    }
    ~NcclCommunicator() override {
        if (staging_) cudaFree(staging_);
    }
    NcclCommunicator(const NcclCommunicator &) = delete;
    NcclCommunicator &operator=(const NcclCommunicator &) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string name() const override { return "nccl"; }
    Device memory() const override { return Device::Cuda; }

    void all_gather_bytes(const void *send, void *recv, size_t bytes) override {
        const size_t need = bytes * (static_cast<size_t>(size_) + 1);
        if (need > staging_bytes_) {
            if (staging_) check_cuda(cudaFree(staging_), "cudaFree");
            staging_ = nullptr;
            check_cuda(cudaMalloc(&staging_, need), "cudaMalloc");
            staging_bytes_ = need;
        }
        char *dsend = static_cast<char *>(staging_), *drecv = dsend + bytes;
        check_cuda(cudaMemcpyAsync(dsend, send, bytes, cudaMemcpyHostToDevice, stream_),
                   "cudaMemcpyAsync");
        check_nccl(ncclAllGather(dsend, drecv, bytes, ncclChar, comm_, stream_), "ncclAllGather");
        check_cuda(cudaMemcpyAsync(recv, drecv, bytes * size_, cudaMemcpyDeviceToHost, stream_),
                   "cudaMemcpyAsync");
        wait();
    }
    void all_gather(const double *send, double *recv, size_t count) override {
        check_nccl(ncclAllGather(send, recv, count, ncclDouble, comm_, stream_), "ncclAllGather");
        wait();
    }
    void all_reduce_sum(double *data, size_t count) override {
        check_nccl(ncclAllReduce(data, data, count, ncclDouble, ncclSum, comm_, stream_),
                   "ncclAllReduce");
        wait();
    }

private:
    // The module's next kernels and host reads come after the collective.
    void wait() {
        check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        ncclResult_t async_error = ncclSuccess;
        check_nccl(ncclCommGetAsyncError(comm_, &async_error), "ncclCommGetAsyncError");
        check_nccl(async_error, "collective");
    }

    ncclComm_t comm_;
    cudaStream_t stream_;
    int rank_ = 0, size_ = 1;
    void *staging_ = nullptr;
    size_t staging_bytes_ = 0;
};

}  // namespace

std::shared_ptr<Communicator> nccl_communicator(ncclComm_t comm, cudaStream_t stream) {
    return std::make_shared<NcclCommunicator>(comm, stream);
}

}  // namespace bn2d
