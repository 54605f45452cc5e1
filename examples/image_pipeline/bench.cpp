// Fused vs unfused image pipeline (Google Benchmark; run with --benchmark_repetitions=N).
//   fused:   one pass, reads the 8-bit image and writes the 8-bit output.
//   unfused: conv1 -> bn1 -> conv2 -> bn2 -> ReLU stages: four float tensors written and read
//            back (8 + 8 + 3 + 3 channels of 4 bytes per pixel, each written once and read once).
#include <benchmark/benchmark.h>

#include "pipeline.h"

namespace {

struct Fixture {
    Halide::Runtime::Buffer<uint8_t, 3> image = example::load_rgb(BN2D_EXAMPLE_IMAGE);
    Halide::Runtime::Buffer<uint8_t, 3> out{image.width(), image.height(), 3};
    example::Network net;
    Fixture() {
        net.calibrate(image);
        net.fused(image, out);
    }
};

Fixture &fixture() {
    static Fixture f;
    return f;
}

void BM_Fused(benchmark::State &state) {
    Fixture &f = fixture();
    for (auto _ : state) f.net.run_fused(f.image, f.out);
    state.SetItemsProcessed(state.iterations() * f.image.width() * f.image.height());
}

void BM_Unfused(benchmark::State &state) {
    Fixture &f = fixture();
    for (auto _ : state) f.net.unfused(f.image, &f.out);
    state.SetItemsProcessed(state.iterations() * f.image.width() * f.image.height());
}

// Interleaved: each repetition runs both, so both see the same machine.
BENCHMARK(BM_Fused)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Unfused)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
