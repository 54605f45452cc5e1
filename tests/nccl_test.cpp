// SyncBatchNorm2d over NCCL (label nccl): one rank per CUDA GPU under mpirun (MPI only carries
// NCCL's unique id). ctest runs it with 1 and 2 ranks; a rank count with more ranks than GPUs
// skips, saying so. With one GPU, the NCCL path runs with a single rank. Started without mpirun
// (scripts/gpu_run.sh on a GPU machine without Open MPI), it is one rank and MPI is not used.
#include <mpi.h>

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "bn2d/nccl.h"
#include "layout_dtype_check.h"

namespace bn2d::test {
namespace {

// Under mpirun (Open MPI, or a PMI launcher): MPI_COMM_WORLD; else one rank without MPI.
bool g_mpi = false;
bool launched_by_mpirun() {
    return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") ||
           std::getenv("PMIX_RANK");
}
int world_rank() {
    int r = 0;
    if (g_mpi) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
int world_size() {
    int p = 1;
    if (g_mpi) MPI_Comm_size(MPI_COMM_WORLD, &p);
    return p;
}
template<typename T>
void broadcast_from_rank0(T &v) {
    if (g_mpi) MPI_Bcast(&v, sizeof v, MPI_BYTE, 0, MPI_COMM_WORLD);
}

int cuda_gpus() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// Every rank's slice of one global batch (rank r: r + 2 images), against the float64 module
// over the whole batch: output, running statistics, grad_input and the group's parameter
// gradients.
TEST(Nccl, MatchesOneModuleOverTheWholeBatch) {
    const int P = world_size(), rank = world_rank(), gpus = cuda_gpus();
    if (gpus < P)
        GTEST_SKIP() << P << " NCCL rank(s) need " << P << " CUDA GPU(s), one per rank; found "
                     << gpus;
    if (!device_available(Device::Cuda)) GTEST_SKIP() << device_unavailable_reason(Device::Cuda);
    ASSERT_EQ(cudaSetDevice(rank), cudaSuccess);
    ASSERT_EQ(cudaFree(nullptr), cudaSuccess);  // creates the device's primary context
    // cuCtxGetCurrent through the runtime: the test binary does not link libcuda (machines
    // without a driver must load it to report the skip).
    using GetCurrent = CUresult (*)(CUcontext *);
    void *entry = nullptr;
    cudaDriverEntryPointQueryResult found{};
    ASSERT_EQ(cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &entry, 12000, cudaEnableDefault,
                                               &found),
              cudaSuccess);
    ASSERT_EQ(found, cudaDriverEntryPointSuccess);
    CUcontext context = nullptr;
    ASSERT_EQ(reinterpret_cast<GetCurrent>(entry)(&context), CUDA_SUCCESS);
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    // The kernels run in the context and on the stream NCCL uses: device pointers are shared.
    use_cuda_context(context, stream);
    ncclUniqueId id;
    if (rank == 0) ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    broadcast_from_rank0(id);
    ncclComm_t comm = nullptr;
    ASSERT_EQ(ncclCommInitRank(&comm, P, id, rank), ncclSuccess);

    int64_t total = 0, first = 0;
    for (int r = 0; r < P; ++r) {
        if (r < rank) first += r + 2;
        total += r + 2;
    }
    const Shape g{total, 24, 9, 13}, s{rank + 2, 24, 9, 13};
    uint32_t seed = std::random_device{}();
    broadcast_from_rank0(seed);
    std::mt19937 rng(seed);
    SyncBatchNorm2d bn(g.c, nccl_communicator(comm, stream));
    reference::Module ref = reference_like(bn);
    randomize_parameters(rng, bn, ref);
    bn.to(Device::Cuda);
    for (const char *layout : {"nchw", "nhwc"}) {
        SCOPED_TRACE(std::string(layout) + ", rank " + std::to_string(rank));
        TypedTensor xg(DType::float32, g, "nchw"), dyg(DType::float32, g, "nchw");
        const std::vector<double> xv = xg.randomize(rng, 1.0, 2.0), dyv = dyg.randomize(rng);
        TypedTensor x(DType::float32, s, layout), y(DType::float32, s, layout),
            dy(DType::float32, s, layout), dx(DType::float32, s, layout);
        const int64_t item = g.c * g.h * g.w;
        for (int64_t i = 0; i < s.numel(); ++i) {
            x.set(i, xv[first * item + i]);
            dy.set(i, dyv[first * item + i]);
        }
        OnDevice xd(x, Device::Cuda), yd(y, Device::Cuda), dyd(dy, Device::Cuda),
            dxd(dx, Device::Cuda);
        bn.forward(xd.view(), yd.view());
        bn.backward(dyd.view(), dxd.view());
        yd.download();
        dxd.download();
        auto mine = [&](const std::vector<double> &v) {
            return std::vector<double>(v.begin() + first * item, v.begin() + (first + s.n) * item);
        };
        const std::vector<double> want_y = ref.forward(g, xv);
        const reference::Module::Grads want = ref.backward(g, xv, dyv);
        expect_output_close(y, mine(want_y), tolerance(DType::float32), s, "y");
        expect_output_close(dx, mine(want.input), tolerance(DType::float32), s, "grad_input");
        expect_running_stats(bn.state_dict(), ref, DType::float32);
        bn.zero_grad();
    }
    use_cuda_context(nullptr, nullptr);
    ncclCommDestroy(comm);
    cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace bn2d::test

int main(int argc, char **argv) {
    bn2d::test::g_mpi = bn2d::test::launched_by_mpirun();
    if (bn2d::test::g_mpi) MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any = failed;
    if (bn2d::test::g_mpi) {
        MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        MPI_Finalize();
    }
    return any;
}
