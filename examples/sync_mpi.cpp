// SyncBatchNorm2d over MPI: every process normalizes its own part of a batch with the statistics
// of the whole batch, as torch.nn.SyncBatchNorm does in data-parallel training.
//   mpirun -np 3 build/examples/bn2d_sync_mpi     (as root: add --allow-run-as-root)
// Process r holds r + 1 images (processes may hold different numbers, or none). Prints, from
// rank 0, the output's per-channel mean and variance over the whole group (0 and 1 by
// construction) and whether every process holds the same running statistics afterwards.
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "bn2d/bn2d.h"
#include "bn2d/mpi.h"

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rc = 0;
    try {
        const int64_t N = rank + 1, C = 16, H = 8, W = 8;
        std::vector<float> x(N * C * H * W), y(x.size()), dy(x.size()), dx(x.size());
        std::mt19937 rng(1000 + rank);
        std::normal_distribution<float> pixel(3.0f + rank, 2.0f);  // each process's data differs
        for (float &v : x) v = pixel(rng);
        for (float &v : dy) v = pixel(rng) - 3.0f;

        // One module per process, all in the group of MPI_COMM_WORLD.
        bn2d::SyncBatchNorm2d bn(C, bn2d::mpi_communicator(MPI_COMM_WORLD));
        bn.forward(bn2d::Tensor::nchw(x.data(), N, C, H, W),
                   bn2d::Tensor::nchw(y.data(), N, C, H, W));
        bn.backward(bn2d::Tensor::nchw(dy.data(), N, C, H, W),
                    bn2d::Tensor::nchw(dx.data(), N, C, H, W));

        // Channel 0 of the output over the whole group: sums of y and y^2, and the count.
        double local[3] = {0, 0, 0}, group[3];
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < H * W; ++i) {
                const double v = y[n * C * H * W + i];
                local[0] += v, local[1] += v * v, local[2] += 1;
            }
        MPI_Allreduce(local, group, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        // The running statistics every process updated: the same bits everywhere.
        const bn2d::StateDict st = bn.state_dict();
        double mine[2] = {st.running_mean[0], st.running_var[0]}, lo[2], hi[2];
        MPI_Allreduce(mine, lo, 2, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(mine, hi, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0) {
            const double mean = group[0] / group[2], var = group[1] / group[2] - mean * mean;
            std::printf("%s over %d processes (%lld images in all)\n", bn.to_string().c_str(), size,
                        static_cast<long long>(size * (size + 1) / 2));
            std::printf("channel 0 of the output over the group: mean %.1e, variance %.4f\n", mean,
                        var);
            std::printf("running_mean[0] %.6f, running_var[0] %.6f: %s on every process\n", mine[0],
                        mine[1], lo[0] == hi[0] && lo[1] == hi[1] ? "the same" : "NOT the same");
            if (std::abs(mean) > 1e-4 || std::abs(var - 1.0) > 1e-3 || lo[0] != hi[0] ||
                lo[1] != hi[1])
                rc = 1;
        }
    } catch (const bn2d::Error &e) {
        std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
        rc = 1;
    }
    int any = 0;
    MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any;
}
