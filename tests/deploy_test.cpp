// Deployment: safetensors checkpoints, proven against Python's safetensors package (the format's
// reference implementation), and fold_into_conv against the unfolded convolution + batch norm.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "common.h"

namespace bn2d::test {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// ---- The Python side ------------------------------------------------------------------------

// One tensor as the reference script exchanges it (tests/safetensors_reference.py).
struct RefTensor {
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<double> values;
};
using RefFile = std::map<std::string, RefTensor>;

class Scratch {
public:
    Scratch() {
        std::string tmpl = (fs::temp_directory_path() / "bn2d_deploy_XXXXXX").string();
        if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        dir_ = tmpl;
    }
    ~Scratch() { fs::remove_all(dir_); }
    std::string path(const std::string &name) const { return (dir_ / name).string(); }
    const fs::path &dir() const { return dir_; }

private:
    fs::path dir_;
};

int python(const std::string &args) {
    const std::string cmd =
        std::string(BN2D_PYTHON) + " " + BN2D_SAFETENSORS_REFERENCE + " " + args;
    return std::system(cmd.c_str());
}

std::string repr(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    std::ostringstream s;
    s.precision(17);
    s << v;
    return s.str();
}

void python_write(const RefFile &tensors, const std::string &out, const Scratch &scratch) {
    const std::string spec = scratch.path("spec.txt");
    std::ofstream f(spec);
    for (const auto &[name, t] : tensors) {
        f << name << "|" << t.dtype << "|";
        for (size_t i = 0; i < t.shape.size(); ++i) f << (i ? "," : "") << t.shape[i];
        f << "|";
        for (size_t i = 0; i < t.values.size(); ++i) f << (i ? " " : "") << repr(t.values[i]);
        f << "\n";
    }
    f.close();
    ASSERT_EQ(python("write " + spec + " " + out), 0) << "the reference writer failed";
}

RefFile python_read(const std::string &file, const Scratch &scratch) {
    const std::string out = scratch.path("read.txt");
    if (python("read " + file + " " + out) != 0) {
        ADD_FAILURE() << "the reference reader rejected " << file;
        return {};
    }
    RefFile result;
    std::ifstream f(out);
    for (std::string line; std::getline(f, line);) {
        std::vector<std::string> fields;
        std::stringstream ls(line);
        for (std::string field; std::getline(ls, field, '|');) fields.push_back(field);
        fields.resize(4);
        std::string name;  // hex of the UTF-8 bytes
        for (size_t i = 0; i + 1 < fields[0].size(); i += 2)
            name += static_cast<char>(std::stoi(fields[0].substr(i, 2), nullptr, 16));
        RefTensor t;
        t.dtype = fields[1];
        std::stringstream shape(fields[2]);
        for (std::string d; std::getline(shape, d, ',');) t.shape.push_back(std::stoll(d));
        std::stringstream values(fields[3]);
        for (std::string v; values >> v;) t.values.push_back(std::strtod(v.c_str(), nullptr));
        result[name] = t;
    }
    return result;
}

// "ok" or "error" per file: whether the reference implementation accepts it.
std::vector<std::string> python_check(const std::vector<std::string> &files,
                                      const Scratch &scratch) {
    std::string args = "check";
    for (const std::string &f : files) args += " " + f;
    const std::string out = scratch.path("check.txt");
    EXPECT_EQ(python(args + " > " + out), 0);
    std::vector<std::string> verdicts;
    std::ifstream f(out);
    for (std::string line; std::getline(f, line);) verdicts.push_back(line);
    return verdicts;
}

// ---- Module state helpers ----------------------------------------------------------------------

// Values exactly representable in `t` (module dtypes hold rounded values).
double round_to(DType t, double v) {
    switch (t) {
    case DType::float32: return static_cast<float>(v);
    case DType::float64: return v;
    case DType::bfloat16: return float_from_bfloat16(bfloat16_from_float(static_cast<float>(v)));
    case DType::float16: return float_from_float16(float16_from_float(static_cast<float>(v)));
    }
    return v;
}

StateDict random_state(std::mt19937 &rng, int64_t C, const BatchNorm2d &bn) {
    std::normal_distribution<double> d(0.0, 1.0);
    StateDict s;
    auto vec = [&](double offset, bool positive) {
        std::vector<double> v(static_cast<size_t>(C));
        for (double &x : v)
            x = round_to(bn.dtype(), positive ? 0.5 + std::abs(d(rng)) : offset + d(rng));
        return v;
    };
    if (bn.affine()) {
        s.weight = vec(1.0, false);
        s.bias = vec(0.0, false);
    }
    if (bn.track_running_stats()) {
        s.running_mean = vec(0.0, false);
        s.running_var = vec(0.0, true);
        s.num_batches_tracked = 1000 + rng() % 100000;
    }
    return s;
}

const char *st_dtype(DType t) {
    switch (t) {
    case DType::float32: return "F32";
    case DType::float64: return "F64";
    case DType::bfloat16: return "BF16";
    case DType::float16: return "F16";
    }
    return "";
}

// A whole model's checkpoint as the reference writes it: our module's keys under `prefix`, in
// `dtype`, beside a convolution's weight and another module's keys.
RefFile model_checkpoint(const StateDict &s, const std::string &prefix, const std::string &dtype,
                         std::mt19937 &rng) {
    const auto C = static_cast<int64_t>(s.running_mean.size());
    RefFile f;
    f[prefix + "weight"] = {dtype, {C}, s.weight};
    f[prefix + "bias"] = {dtype, {C}, s.bias};
    f[prefix + "running_mean"] = {dtype, {C}, s.running_mean};
    f[prefix + "running_var"] = {dtype, {C}, s.running_var};
    f[prefix + "num_batches_tracked"] = {"I64", {}, {double(s.num_batches_tracked)}};
    f["layer1.0.conv1.weight"] = {"F32", {C, 3, 3, 3}, to_f64(random_vector(rng, C * 27))};
    f["layer1.0.bn2.weight"] = {"F32", {C}, to_f64(random_vector(rng, C))};
    return f;
}

// ---- Checkpoints -------------------------------------------------------------------------------

class Checkpoint : public ::testing::TestWithParam<DType> {};

// Ours -> the reference reader: key names, dtypes, shapes and every value exact.
TEST_P(Checkpoint, SavedFileReadsBackInTheReference) {
    const DType dtype = GetParam();
    Scratch scratch;
    std::mt19937 rng(std::random_device{}());
    Options o;
    o.dtype = dtype;
    BatchNorm2d bn(13, o);
    const StateDict state = random_state(rng, 13, bn);
    bn.load_state_dict(state);
    const std::string file = scratch.path("bn.safetensors"), prefix = "layer1.0.bn1.";
    save_safetensors(bn, file, prefix);

    const RefFile got = python_read(file, scratch);
    ASSERT_EQ(got.size(), 5u);
    const std::map<std::string, const std::vector<double> *> expected{
        {"weight", &state.weight},
        {"bias", &state.bias},
        {"running_mean", &state.running_mean},
        {"running_var", &state.running_var}};
    for (const auto &[key, values] : expected) {
        const auto it = got.find(prefix + key);
        ASSERT_NE(it, got.end()) << prefix + key;
        EXPECT_EQ(it->second.dtype, st_dtype(dtype)) << key;
        EXPECT_EQ(it->second.shape, std::vector<int64_t>{13}) << key;
        EXPECT_EQ(it->second.values, *values) << key;
    }
    const RefTensor &count = got.at(prefix + "num_batches_tracked");
    EXPECT_EQ(count.dtype, "I64");
    EXPECT_TRUE(count.shape.empty());
    EXPECT_EQ(count.values, std::vector<double>{double(state.num_batches_tracked)});
    // Atomic write: nothing but the file is left in the directory.
    EXPECT_EQ(std::distance(fs::directory_iterator(scratch.dir()), fs::directory_iterator()), 2)
        << "a temporary file was left behind (read.txt is the reference's output)";
}

// The reference writer -> ours: a whole model's checkpoint, our keys under a prefix in every
// float dtype, loaded into a float32 module (rounded as PyTorch's copy_ rounds).
TEST_P(Checkpoint, LoadsTheReferenceWritersModelCheckpoint) {
    const DType file_dtype = GetParam();
    Scratch scratch;
    std::mt19937 rng(std::random_device{}());
    BatchNorm2d probe(9);
    StateDict s = random_state(rng, 9, probe);
    for (auto *v : {&s.weight, &s.bias, &s.running_mean, &s.running_var})
        for (double &x : *v) x = round_to(file_dtype, x + 1e-3 * x);  // not float32-exact for f64
    const std::string file = scratch.path("model.safetensors");
    python_write(model_checkpoint(s, "layer1.0.bn1.", st_dtype(file_dtype), rng), file, scratch);

    BatchNorm2d bn(9);
    load_safetensors(bn, file, "layer1.0.bn1.");
    const StateDict got = bn.state_dict();
    for (size_t c = 0; c < 9; ++c) {
        EXPECT_EQ(got.weight[c], round_to(DType::float32, s.weight[c]));
        EXPECT_EQ(got.bias[c], round_to(DType::float32, s.bias[c]));
        EXPECT_EQ(got.running_mean[c], round_to(DType::float32, s.running_mean[c]));
        EXPECT_EQ(got.running_var[c], round_to(DType::float32, s.running_var[c]));
    }
    EXPECT_EQ(got.num_batches_tracked, s.num_batches_tracked);
}

// Ours -> ours, in every module dtype, also non-affine and untracked modules (whose state_dict
// has fewer keys), with a prefix that needs JSON escaping.
TEST_P(Checkpoint, RoundTripsEveryModuleKind) {
    Scratch scratch;
    std::mt19937 rng(std::random_device{}());
    for (bool affine : {true, false})
        for (bool track : {true, false}) {
            Options o;
            o.dtype = GetParam();
            o.affine = affine;
            o.track_running_stats = track;
            BatchNorm2d a(5, o), b(5, o);
            a.load_state_dict(random_state(rng, 5, a));
            const std::string file = scratch.path("rt.safetensors"), prefix = "m.\"q\\\t.";
            save_safetensors(a, file, prefix);
            EXPECT_EQ(read_safetensors_header(file).size(), size_t(2 * affine + 3 * track));
            load_safetensors(b, file, prefix);
            EXPECT_TRUE(same_state(a.state_dict(), b.state_dict())) << a.to_string();
            const RefFile ref = python_read(file, scratch);  // the reference agrees on the names
            EXPECT_EQ(ref.size(), size_t(2 * affine + 3 * track));
            if (affine) EXPECT_EQ(ref.count(prefix + "weight"), 1u) << a.to_string();
        }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Checkpoint,
                         ::testing::Values(DType::float32, DType::float64, DType::bfloat16,
                                           DType::float16),
                         [](const auto &info) { return std::string(dtype_name(info.param)); });

// Every bad file is a bn2d::Error naming the problem, with the module unchanged.
class CheckpointErrors : public ::testing::Test {
protected:
    void SetUp() override {
        rng.seed(std::random_device{}());
        good = random_state(rng, 6, bn);
        file_state = random_state(rng, 6, bn);
        bn.load_state_dict(good);
    }
    // Loads and expects an Error containing `what`, with the state as it was.
    void expect_rejected(const std::string &file, const std::string &what,
                         const std::string &prefix = "") {
        try {
            load_safetensors(bn, file, prefix);
            ADD_FAILURE() << "no error, expected one mentioning: " << what;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr(what));
            EXPECT_THAT(e.what(), HasSubstr(file));
        }
        EXPECT_TRUE(same_state(bn.state_dict(), good)) << "the state changed on a failed load";
    }
    RefFile checkpoint() { return model_checkpoint(file_state, "bn.", "F32", rng); }

    std::mt19937 rng;
    Scratch scratch;
    BatchNorm2d bn{6};
    StateDict good, file_state;
};

TEST_F(CheckpointErrors, MissingKeyWrongShapeWrongDtypeUnexpectedKey) {
    const std::string file = scratch.path("bad.safetensors");
    RefFile f = checkpoint();
    f.erase("bn.running_var");
    python_write(f, file, scratch);
    expect_rejected(file, "missing key \"bn.running_var\"", "bn.");

    f = checkpoint();
    f["bn.bias"].shape = {2, 3};
    python_write(f, file, scratch);
    expect_rejected(file, "\"bn.bias\" has shape [2, 3], the module has [6]", "bn.");

    f = checkpoint();
    f["bn.weight"] = {"I32", {6}, {1, 2, 3, 4, 5, 6}};
    python_write(f, file, scratch);
    expect_rejected(file, "\"bn.weight\" is I32: expected F64, F32, BF16 or F16", "bn.");

    f = checkpoint();
    f["bn.num_batches_tracked"] = {"I64", {2}, {1, 2}};
    python_write(f, file, scratch);
    expect_rejected(file, "expected [] (a scalar)", "bn.");

    f = checkpoint();
    f["bn.num_batches_tracked"] = {"I64", {}, {-3}};
    python_write(f, file, scratch);
    expect_rejected(file, "negative", "bn.");

    f = checkpoint();
    f["bn.momentum"] = {"F32", {1}, {0.1}};
    python_write(f, file, scratch);
    expect_rejected(file, "unexpected key(s) \"bn.momentum\"", "bn.");
    load_safetensors(bn, file, "bn.", /*strict=*/false);  // non-strict ignores it
    EXPECT_TRUE(same_state(bn.state_dict(), file_state));
    bn.load_state_dict(good);

    expect_rejected(scratch.path("does_not_exist.safetensors"), "cannot open");
    expect_rejected(scratch.dir().string(), "is a directory, not a safetensors file");
    expect_rejected("/dev/null", "not a regular file");
    try {
        read_safetensors_header(scratch.dir().string());
        ADD_FAILURE() << "read the header of a directory";
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("is a directory"));
    }
}

// A checkpoint without num_batches_tracked (PyTorch < 0.4.1) loads it as 0, as libtorch does.
TEST_F(CheckpointErrors, MissingBatchCountLoadsAsZero) {
    const std::string file = scratch.path("old.safetensors");
    RefFile f = checkpoint();
    f.erase("bn.num_batches_tracked");
    python_write(f, file, scratch);
    load_safetensors(bn, file, "bn.");
    EXPECT_EQ(bn.num_batches_tracked(), 0);
    EXPECT_EQ(bn.state_dict().running_var, file_state.running_var);
}

// Every truncation of a valid file, and every single-byte corruption of its header: an Error
// (never a crash or an out-of-bounds read: the sanitizer job runs this too) whenever the
// reference implementation rejects the file; a file we accept loads exactly what the
// reference reads from it.
TEST_F(CheckpointErrors, TruncatedAndCorruptFiles) {
    const std::string good_file = scratch.path("good.safetensors");
    python_write(checkpoint(), good_file, scratch);
    std::string bytes;
    {
        std::ifstream in(good_file, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    ASSERT_LT(8 + header_len, bytes.size());

    std::vector<std::string> variants;  // file contents
    for (size_t n = 0; n < bytes.size(); ++n) variants.push_back(bytes.substr(0, n));
    std::uniform_int_distribution<int> byte(0, 255);
    for (size_t i = 0; i < 8 + header_len; ++i) {
        std::string v = bytes;
        v[i] = static_cast<char>(v[i] ^ (1 + byte(rng) % 255));  // always a different byte
        variants.push_back(v);
    }
    // Dtype names one byte away from the written ones that name other valid dtypes: a random
    // flip finds them about once in a few hundred runs (a flaky failure before the reference
    // reader knew U32 and U64), so every one is also a variant of its own here.
    const std::pair<std::string, std::string> renames[] = {{"\"F32\"", "\"U32\""},
                                                           {"\"F32\"", "\"I32\""},
                                                           {"\"I64\"", "\"U64\""},
                                                           {"\"I64\"", "\"F64\""}};
    for (const auto &[from, to] : renames) {
        for (size_t at = bytes.find(from); at < 8 + header_len; at = bytes.find(from, at + 1)) {
            std::string v = bytes;
            v.replace(at, from.size(), to);
            variants.push_back(v);
        }
    }
    variants.push_back(bytes + "x");  // a byte after the last tensor
    // A NUL byte in the header's padding after its closing brace: a JSON reader that takes NUL
    // for the end of its input accepts it (nlohmann's does; a random flip above found it).
    if (const size_t brace = bytes.rfind('}', 8 + header_len - 1); brace + 1 < 8 + header_len) {
        std::string nul = bytes;
        nul[brace + 1] = '\0';
        variants.push_back(nul);
    }
    std::vector<std::string> files;
    for (size_t i = 0; i < variants.size(); ++i) {
        files.push_back(scratch.path("v" + std::to_string(i)));
        std::ofstream(files.back(), std::ios::binary) << variants[i];
    }
    const std::vector<std::string> verdicts = python_check(files, scratch);
    ASSERT_EQ(verdicts.size(), files.size());

    int rejected_by_both = 0, accepted_by_both = 0, stricter = 0;
    for (size_t i = 0; i < files.size(); ++i) {
        bn.load_state_dict(good);
        bool accepted = false;
        std::string why;
        try {
            load_safetensors(bn, files[i], "bn.");
            accepted = true;
        } catch (const Error &e) {
            EXPECT_TRUE(same_state(bn.state_dict(), good)) << "variant " << i;
            why = e.what();
        }
        if (verdicts[i] == "error") {
            EXPECT_FALSE(accepted)
                << "variant " << i << " (" << (i < bytes.size() ? "truncated" : "corrupt")
                << ") is rejected by the reference but loaded";
            rejected_by_both += !accepted;
        } else if (accepted) {
            ++accepted_by_both;  // e.g. a flipped value byte: what we loaded is what it says
            const RefFile ref = python_read(files[i], scratch);
            StateDict s = bn.state_dict();
            EXPECT_EQ(s.weight, ref.at("bn.weight").values) << "variant " << i;
            EXPECT_EQ(s.running_var, ref.at("bn.running_var").values) << "variant " << i;
        } else {
            // A well-formed file that is not this module's checkpoint any more: a key name or
            // a dtype changed (measured: every such case is one of these).
            if (stricter++ < 40) std::printf("only we reject variant %zu: %s\n", i, why.c_str());
        }
    }
    EXPECT_EQ(rejected_by_both + accepted_by_both + stricter, int(files.size()));
    EXPECT_GT(rejected_by_both, int(bytes.size()));  // every truncation at least
    std::printf("%zu variants: %d rejected by both, %d accepted by both, %d rejected only by us\n",
                files.size(), rejected_by_both, accepted_by_both, stricter);
}

// A failed save leaves no file and no temporary behind; a successful one replaces the old file.
TEST_F(CheckpointErrors, SaveIsAtomic) {
    const std::string file = scratch.path("ckpt.safetensors");
    EXPECT_THROW(save_safetensors(bn, scratch.path("no_such_dir/ckpt.safetensors")), Error);
    std::ofstream(file) << "old contents";
    save_safetensors(bn, file);
    BatchNorm2d other(6);
    load_safetensors(other, file);
    EXPECT_TRUE(same_state(other.state_dict(), good));
    EXPECT_EQ(std::distance(fs::directory_iterator(scratch.dir()), fs::directory_iterator()), 1);
}

// ---- fold_into_conv ---------------------------------------------------------------------------

// A direct float64 convolution, stride 1, no padding: out[n, o, y, x].
std::vector<double> conv2d(const std::vector<double> &x, int64_t N, int64_t Ci, int64_t H,
                           int64_t W, const std::vector<double> &w, const std::vector<double> &b,
                           int64_t Co, int64_t K) {
    const int64_t Ho = H - K + 1, Wo = W - K + 1;
    std::vector<double> out(static_cast<size_t>(N * Co * Ho * Wo));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < Co; ++o)
            for (int64_t y = 0; y < Ho; ++y)
                for (int64_t xx = 0; xx < Wo; ++xx) {
                    double acc = b[o];
                    for (int64_t i = 0; i < Ci; ++i)
                        for (int64_t ky = 0; ky < K; ++ky)
                            for (int64_t kx = 0; kx < K; ++kx)
                                acc += x[((n * Ci + i) * H + y + ky) * W + xx + kx] *
                                       w[((o * Ci + i) * K + ky) * K + kx];
                    out[((n * Co + o) * Ho + y) * Wo + xx] = acc;
                }
    return out;
}

// conv -> eval batch norm (the module's own kernel) equals the folded conv alone.
TEST(Fold, FoldedConvolutionEqualsConvolutionThenBatchNorm) {
    std::mt19937 rng(std::random_device{}());
    const int64_t N = 2, Ci = 3, H = 9, W = 11, Co = 6, K = 3, Ho = H - K + 1, Wo = W - K + 1;
    for (DType dtype : {DType::float32, DType::float64}) {
        if (!dtype_not_built(dtype).empty()) continue;  // a subset build (the sanitizer jobs)
        Options o;
        o.dtype = dtype;
        BatchNorm2d bn(Co, o);
        bn.load_state_dict(random_state(rng, Co, bn));
        bn.eval();
        const std::vector<double> x = to_f64(random_vector(rng, N * Ci * H * W));
        std::vector<double> w = to_f64(random_vector(rng, Co * Ci * K * K, 0.0f, 0.3f));
        std::vector<double> b = to_f64(random_vector(rng, Co));

        // Unfolded: the convolution, then the module (on its dtype's tensors).
        const std::vector<double> conv = conv2d(x, N, Ci, H, W, w, b, Co, K);
        auto fill = [](TypedTensor &t, const std::vector<double> &v) {
            for (size_t i = 0; i < v.size(); ++i) t.set(static_cast<int64_t>(i), v[i]);
        };
        TypedTensor conv_t(dtype, Shape{N, Co, Ho, Wo}, "nchw"),
            y(dtype, Shape{N, Co, Ho, Wo}, "nchw");
        fill(conv_t, conv);
        bn.forward(conv_t.view(), y.view());  // y starts poisoned (NaN)
        const std::vector<double> unfolded = y.values();

        // Folded: the weights in the module's dtype, updated in place.
        TypedTensor wt(dtype, Shape{Co, Ci, K, K}, "nchw"), bt(dtype, Shape{1, 1, 1, Co}, "nchw");
        fill(wt, w);
        fill(bt, b);
        fold_into_conv(bn, wt.view(), Tensor(bt.view().data_ptr(), dtype, {Co}));
        const std::vector<double> folded = conv2d(x, N, Ci, H, W, wt.values(), bt.values(), Co, K);

        const double tol = dtype == DType::float64 ? 1e-12 : 2e-5;
        EXPECT_TRUE(all_close(folded, unfolded, tol, tol, [](int64_t i) {
            return "element " + std::to_string(i);
        })) << dtype_name(dtype);
    }
}

// The folded values are PyTorch's formula, for the transposed layout (ConvTranspose2d's
// [C_in, C_out, kH, kW]) over a strided view, and a non-affine module.
TEST(Fold, TransposedStridedAndNonAffine) {
    std::mt19937 rng(std::random_device{}());
    const int64_t Cin = 4, C = 5, K = 2;
    for (bool affine : {true, false}) {
        Options o;
        o.affine = affine;
        BatchNorm2d bn(C, o);
        const StateDict s = random_state(rng, C, bn);
        bn.load_state_dict(s);
        bn.eval();
        // Memory in [K, K, C, Cin] order, viewed as [Cin, C, K, K].
        std::vector<float> mem = random_vector(rng, Cin * C * K * K);
        const std::vector<float> before = mem;
        std::vector<int64_t> strides{1, Cin, C * Cin * K, C * Cin};
        Tensor weight(mem.data(), {Cin, C, K, K}, strides);
        std::vector<float> bias = random_vector(rng, C);
        const std::vector<float> bias_before = bias;
        fold_into_conv(bn, weight, Tensor(bias.data(), {C}), /*transposed=*/true);
        for (int64_t c = 0; c < C; ++c) {
            const double w = affine ? s.weight[c] : 1.0, b = affine ? s.bias[c] : 0.0;
            const double scale = w / std::sqrt(s.running_var[c] + bn.eps());
            EXPECT_EQ(bias[c], float((bias_before[c] - s.running_mean[c]) * scale + b)) << c;
            for (int64_t i = 0; i < Cin; ++i)
                for (int64_t k = 0; k < K * K; ++k) {
                    const int64_t off = i + c * Cin + (k / K) * C * Cin * K + (k % K) * C * Cin;
                    EXPECT_EQ(mem[off], float(before[off] * scale)) << i << "," << c << "," << k;
                }
        }
    }
}

TEST(Fold, ErrorsLeaveTheTensorsUntouched) {
    std::mt19937 rng(std::random_device{}());
    const int64_t C = 4;
    BatchNorm2d bn(C);
    bn.load_state_dict(random_state(rng, C, bn));
    std::vector<float> w = random_vector(rng, C * 2 * 3 * 3), b = random_vector(rng, C);
    const std::vector<float> w0 = w, b0 = b;
    std::vector<double> b64(C, 0.5);
    auto rejected = [&](const Tensor &wt, const Tensor &bt, bool transposed,
                        const std::string &what) {
        try {
            fold_into_conv(bn, wt, bt, transposed);
            ADD_FAILURE() << "no error, expected: " << what;
        } catch (const Error &e) {
            EXPECT_THAT(e.what(), HasSubstr(what));
        }
        EXPECT_EQ(w, w0);
        EXPECT_EQ(b, b0);
    };
    const Tensor weight(w.data(), {C, 2, 3, 3}), bias(b.data(), {C});
    rejected(weight, bias, false, "training mode");  // a new module trains
    bn.eval();
    rejected(Tensor(w.data(), {C + 1, 2, 3, 1}), bias, false, "has 5 output channels");
    rejected(weight, bias, true, "transposed; groups must be 1");
    rejected(weight, Tensor(b.data(), {C - 1}), false, "conv_bias must be [4]");
    rejected(weight, Tensor(b64.data(), DType::float64, {C}), false, "conv_bias is float64");
    rejected(Tensor(w.data(), {C, 2, 3, 3}, {0, 9, 3, 1}), bias, false, "share memory");
    rejected(weight, Tensor(w.data() + 3, {C}), false, "overlap");
    rejected(Tensor(w.data(), {C}), bias, false, "at least 2 dimensions");
    rejected(Tensor::on_device(1, {C, 2, 3, 3}, Device::Cuda), bias, false, "host tensors");
    // The module is const: its own storage, as the convolution's weight or bias, is refused and
    // left as it was (views of weight() and running_mean() reshaped as a [4, 1] weight).
    const StateDict before = bn.state_dict();
    for (const auto &[name, view] :
         {std::pair{"weight()", bn.weight()}, std::pair{"running_mean()", bn.running_mean()},
          std::pair{"bias_grad()", bn.bias_grad()}}) {
        SCOPED_TRACE(name);
        const Tensor as_weight(view.data_ptr(), view.dtype(), {C, 1});
        rejected(as_weight, bias, false, std::string("conv_weight overlaps the module's ") + name);
        rejected(weight, view, false, std::string("conv_bias overlaps the module's ") + name);
        const StateDict after = bn.state_dict();
        EXPECT_EQ(after.weight, before.weight);
        EXPECT_EQ(after.bias, before.bias);
        EXPECT_EQ(after.running_mean, before.running_mean);
        EXPECT_EQ(after.running_var, before.running_var);
        EXPECT_EQ(to_vector(bn.bias_grad()), std::vector<float>(C, 0.0f));
    }
    BatchNorm2d untracked(C, 1e-5, 0.1, true, false);
    untracked.eval();
    try {
        fold_into_conv(untracked, weight, bias);
        ADD_FAILURE();
    } catch (const Error &e) {
        EXPECT_THAT(e.what(), HasSubstr("no running statistics"));
    }
    EXPECT_EQ(w, w0);
}

}  // namespace
}  // namespace bn2d::test
