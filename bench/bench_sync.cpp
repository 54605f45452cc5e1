// SyncBatchNorm2d's overhead: a training step (forward + backward) per process against
// single-process BatchNorm2d on the same per-process batch, in the same run.
//   mpirun -np P build/bench/bn2d_bench_sync [--benchmark_repetitions=...]   (scripts/bench_sync.sh)
// Every process runs the same fixed iteration counts (Google Benchmark's adaptive count could
// differ between processes and leave one waiting in a collective). An iteration's time is the
// slowest process's, after a barrier: what a data-parallel step waits for. Rank 0 reports.
// Counters: bytes each process sends per step (`sent_per_step`), and the tensor bytes of its
// batch (`tensor_bytes`): the statistics, not the tensor, cross between processes.
#include <mpi.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "bn2d/bn2d.h"
#include "bn2d/mpi.h"
#include "mpi_world.h"

namespace {

using bn2d::test::CountingCommunicator;
using bn2d::test::world_rank;
using bn2d::test::world_size;

// Per-process batches: a small batch of a ResNet stage, as data parallelism leaves them.
struct Problem {
    int64_t n, c, h, w;
};
const Problem kProblems[] = {{8, 64, 56, 56}, {8, 256, 14, 14}, {4, 2048, 7, 7}};

void step(bn2d::BatchNorm2d &bn, const bn2d::Tensor &x, const bn2d::Tensor &y,
          const bn2d::Tensor &dy, const bn2d::Tensor &dx) {
    bn.forward(x, y);
    bn.backward(dy, dx);
}

// sync: SyncBatchNorm2d over MPI_COMM_WORLD; else BatchNorm2d on this process's batch alone.
void BM_TrainingStep(benchmark::State &state, bool sync) {
    const Problem p = kProblems[state.range(0)];
    const int64_t numel = p.n * p.c * p.h * p.w;
    std::vector<float> x(numel), y(numel), dy(numel), dx(numel);
    std::mt19937 rng(17 + world_rank());
    std::normal_distribution<float> d(1.0f, 2.0f);
    for (float &v : x) v = d(rng);
    for (float &v : dy) v = d(rng);
    auto t = [&](std::vector<float> &v) {
        return bn2d::Tensor::nchw(v.data(), p.n, p.c, p.h, p.w);
    };

    auto counting = std::make_shared<CountingCommunicator>(bn2d::mpi_communicator(MPI_COMM_WORLD));
    std::unique_ptr<bn2d::BatchNorm2d> bn =
        sync ? std::make_unique<bn2d::SyncBatchNorm2d>(p.c, counting)
             : std::make_unique<bn2d::BatchNorm2d>(p.c);
    step(*bn, t(x), t(y), t(dy), t(dx));  // warm-up: caches, page faults, thread pool
    counting->bytes_sent = 0;
    for (auto _ : state) {
        MPI_Barrier(MPI_COMM_WORLD);
        const auto t0 = std::chrono::steady_clock::now();
        step(*bn, t(x), t(y), t(dy), t(dx));
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        state.SetIterationTime(s);
    }
    state.counters["processes"] = world_size();
    state.counters["sent_per_step"] =
        static_cast<double>(counting->bytes_sent) / static_cast<double>(state.iterations());
    state.counters["tensor_bytes"] = static_cast<double>(numel * sizeof(float));
    state.SetLabel(std::to_string(p.n) + "x" + std::to_string(p.c) + "x" + std::to_string(p.h) +
                   "x" + std::to_string(p.w) + " per process");
}

// Repetitions interleaved in registration order (single, sync, single, sync, ...), the same on
// every process: the pair of one repetition saw the same machine, so their ratio is fair.
// (Google Benchmark's random interleaving would shuffle differently on each process.)
void register_benchmarks(int repetitions) {
    for (int rep = 0; rep < repetitions; ++rep)
        for (int problem = 0; problem < 3; ++problem)
            for (bool sync : {false, true})
                benchmark::RegisterBenchmark(
                    (std::string(sync ? "sync" : "single_process") + "/rep:" + std::to_string(rep))
                        .c_str(),
                    BM_TrainingStep, sync)
                    ->Arg(problem)
                    ->UseManualTime()
                    ->Iterations(20)
                    ->Unit(benchmark::kMillisecond);
}

// Rank 0 reports; the others run the same benchmarks silently.
class NullReporter : public benchmark::BenchmarkReporter {
public:
    bool ReportContext(const Context &) override { return true; }
    void ReportRuns(const std::vector<Run> &) override {}
};

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    // Every process shares the machine: split the cores between them.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int per_process = std::max(1, cores / world_size());
    bn2d::set_num_threads(per_process);
    // Only rank 0 writes --benchmark_out (the others would truncate the same file).
    std::vector<char *> args;
    for (int i = 0; i < argc; ++i)
        if (world_rank() == 0 || std::string(argv[i]).rfind("--benchmark_out", 0) != 0)
            args.push_back(argv[i]);
    argc = static_cast<int>(args.size());
    argv = args.data();
    benchmark::Initialize(&argc, argv);
    register_benchmarks(9);
    if (world_rank() == 0) {
        benchmark::AddCustomContext("processes", std::to_string(world_size()));
        benchmark::AddCustomContext("threads_per_process", std::to_string(per_process));
        benchmark::RunSpecifiedBenchmarks();
    } else {
        NullReporter null;
        benchmark::RunSpecifiedBenchmarks(&null);
    }
    benchmark::Shutdown();
    MPI_Finalize();
    return 0;
}
