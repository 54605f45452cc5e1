// The image-pipeline example: a photograph through conv -> batchnorm -> ReLU -> conv ->
// batchnorm -> ReLU, once as one fused Halide pipeline (the batch norms as stages from the
// installed bn2d::halide package) and once as separate stages with the bn2d module between
// them. Checks that both give the same image and writes it as a PNG.
//   image_pipeline [input.png] [output.png]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pipeline.h"

int main(int argc, char **argv) {
    const std::string in_path = argc > 1 ? argv[1] : BN2D_EXAMPLE_IMAGE;
    const std::string out_path = argc > 2 ? argv[2] : "image_pipeline.png";
    try {
        Halide::Runtime::Buffer<uint8_t, 3> image = example::load_rgb(in_path);
        example::Network net;
        net.calibrate(image);

        Halide::Runtime::Buffer<uint8_t, 3> fused(image.width(), image.height(), 3),
            unfused(image.width(), image.height(), 3);
        net.fused(image, fused);
        net.unfused(image, &unfused);

        // The two orders of float arithmetic may round a value on either side of a level.
        int worst = 0;
        long differing = 0;
        fused.for_each_element([&](int x, int y, int c) {
            const int d = std::abs(int(fused(x, y, c)) - int(unfused(x, y, c)));
            worst = std::max(worst, d);
            differing += d != 0;
        });
        std::printf("%dx%d image: fused and unfused pipelines differ by at most %d level(s) "
                    "(%ld of %d values differ)\n",
                    image.width(), image.height(), worst, differing, image.number_of_elements());
        const bn2d::StateDict s = net.bn1.state_dict();
        std::printf("bn1 running_mean[0..2] = %.4f %.4f %.4f (calibrated on the image)\n",
                    s.running_mean[0], s.running_mean[1], s.running_mean[2]);
        if (worst > 1) return 1;
        if (!Halide::Tools::save(fused, out_path))
            throw std::runtime_error("cannot write " + out_path);
        std::printf("wrote %s\n", out_path.c_str());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "image_pipeline: %s\n", e.what());
        return 1;
    }
    return 0;
}
