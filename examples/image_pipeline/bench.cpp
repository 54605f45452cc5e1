// Fused vs unfused image pipeline (Google Benchmark; run with --benchmark_repetitions=N).
//   fused:   one pass, reads the 8-bit image and writes the 8-bit output.
//   unfused: conv1 -> bn1 -> conv2 -> bn2 -> ReLU stages: four float tensors written and read
//            back (8 + 8 + 3 + 3 channels of 4 bytes per pixel, each written once and read once).
// Both are compute-bound in the convolutions (432 multiply-adds per pixel); fusion removes the
// batch norm and ReLU passes, which BM_UnfusedNormPasses times alone.
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

// The passes fusion removes, alone: the unfused path's two batch norm calls and its ReLU stage
// (on the intermediates of the last unfused run). Fused saves at most this much.
void BM_UnfusedNormPasses(benchmark::State &state) {
    Fixture &f = fixture();
    example::Network &n = f.net;
    for (auto _ : state) {
        n.bn1.forward(example::nchw(n.conv1), example::nchw(n.norm1));
        n.bn2.forward(example::nchw(n.conv2), example::nchw(n.norm2));
        example::check(relu_to_u8(n.norm2, f.out), "relu_to_u8");
    }
    state.SetItemsProcessed(state.iterations() * f.image.width() * f.image.height());
}

// Run with --benchmark_enable_random_interleaving=true so repetitions of the three alternate.
BENCHMARK(BM_Fused)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Unfused)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_UnfusedNormPasses)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
