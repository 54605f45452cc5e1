// bn2d::mpi: the Communicator of SyncBatchNorm2d over an MPI communicator (host memory).
#include "bn2d/mpi.h"

#include <climits>
#include <string>

namespace bn2d {
namespace {

void check_mpi(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
    throw Error(
        std::string("mpi: ") + what + ": " +
        (len > 0 ? std::string(text, static_cast<size_t>(len)) : "error " + std::to_string(rc)));
}

int as_int(size_t n, const char *what) {
    if (n > static_cast<size_t>(INT_MAX))
        throw Error(std::string("mpi: ") + what + ": " + std::to_string(n) +
                    " elements exceed MPI's int count");
    return static_cast<int>(n);
}

class MpiCommunicator final : public Communicator {
public:
    explicit MpiCommunicator(MPI_Comm comm) {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (!initialized) throw Error("mpi: MPI_Init has not been called");
        if (comm == MPI_COMM_NULL) throw Error("mpi: the communicator is MPI_COMM_NULL");
        check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    }
    ~MpiCommunicator() override {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Comm_free(&comm_);
    }
    MpiCommunicator(const MpiCommunicator &) = delete;
    MpiCommunicator &operator=(const MpiCommunicator &) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string name() const override { return "mpi"; }
    Device memory() const override { return Device::CPU; }

    void all_gather_bytes(const void *send, void *recv, size_t bytes) override {
        const int n = as_int(bytes, "MPI_Allgather");
        check_mpi(MPI_Allgather(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_), "MPI_Allgather");
    }
    void all_gather(const double *send, double *recv, size_t count) override {
        const int n = as_int(count, "MPI_Allgather");
        check_mpi(MPI_Allgather(send, n, MPI_DOUBLE, recv, n, MPI_DOUBLE, comm_), "MPI_Allgather");
    }
    void all_reduce_sum(double *data, size_t count) override {
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, as_int(count, "MPI_Allreduce"), MPI_DOUBLE,
                                MPI_SUM, comm_),
                  "MPI_Allreduce");
    }

private:
    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
};

}  // namespace

std::shared_ptr<Communicator> mpi_communicator(MPI_Comm comm) {
    return std::make_shared<MpiCommunicator>(comm);
}

}  // namespace bn2d
