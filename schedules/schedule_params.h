// Schedule parameters as data: a per-machine `key = value` file read at generator time.
//
// Keys are `<backend>.<kernel>.<knob>` or `<backend>.*.<knob>` (every kernel of that backend):
//   backend  cpu, cuda, opencl, or gpu (a default shared by cuda and opencl); or runtime, for
//            the run-time strategy thresholds (runtime.train_fwd.split_max_plane)
//   kernel   a schedule kernel (train_fwd, eval_fwd, train_bwd, eval_bwd) or *
//   knob     a knob the backend's schedule declares (cpu::kKnobs, gpu::kKnobs)
// A CUDA kernel looks up cuda.<kernel>.<knob>, cuda.*.<knob>, gpu.<kernel>.<knob>,
// gpu.*.<knob>, then the schedule's default; OpenCL the same with opencl.
//
// A tuned file must never fall back to a default silently, so every generator run checks the
// whole file: a key whose backend, kernel or knob is unknown (`cpu.*.acumulators`,
// `cpu.train_fwdd.chunk`) or that is set twice fails the build, naming the file, line and key;
// and after a kernel is scheduled, a key naming that kernel which its schedule never read fails
// too.
#pragma once

#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bn2d_vocabulary.h"  // generated from generators/variants.cmake

namespace bn2d {

// The layouts of the variant table. Schedules branch on nhwc (channels_last: C innermost,
// reductions vectorize over C); nchw's schedule (W innermost) also runs strided kernels, whose
// strides are unknown (vocabulary::kScheduleLayouts).
using Layout = vocabulary::Layout;

inline Layout layout_from_name(const std::string &name) {
    for (int i = 0; i < vocabulary::kLayoutCount; ++i)
        if (name == vocabulary::kLayouts[i]) return static_cast<Layout>(i);
    std::string known;
    for (const char *l : vocabulary::kLayouts)
        known += (known.empty() ? "" : ", ") + std::string(l);
    throw std::runtime_error("layout must be one of " + known + ", got '" + name + "'");
}

// The layout whose schedule a layout runs: itself when it has one, else the first.
inline Layout schedule_layout(Layout layout) {
    for (Layout l : vocabulary::kScheduleLayouts)
        if (l == layout) return l;
    return vocabulary::kScheduleLayouts[0];
}

// The kernel a machine file names for an op's schedule in a layout: train_fwd, train_fwd_nhwc.
inline std::string schedule_kernel(const std::string &op, Layout layout) {
    const Layout l = schedule_layout(layout);
    if (l == vocabulary::kScheduleLayouts[0]) return op;
    return op + "_" + vocabulary::kLayouts[static_cast<int>(l)];
}

// The op and layout of a machine file's kernel name (the inverse of schedule_kernel).
struct ScheduleKernel {
    std::string op;
    Layout layout;
};
inline ScheduleKernel parse_schedule_kernel(const std::string &kernel) {
    for (const char *op : vocabulary::kScheduleOps)
        for (Layout l : vocabulary::kScheduleLayouts)
            if (schedule_kernel(op, l) == kernel) return {op, l};
    throw std::runtime_error("unknown schedule kernel '" + kernel + "'");
}

// A knob as the tuner sees it (tools/tune/): the value its schedule uses when no machine
// file sets it, and the values worth trying, ascending. Every value in `values` gives a correct
// kernel on every target of the backend (any ISA, dtype, layout): the tuner may write any of
// them.
struct KnobRange {
    std::string knob;
    int fallback;
    std::vector<int> values;
};

inline const KnobRange &knob_range(const std::vector<KnobRange> &ranges, const std::string &knob) {
    for (const KnobRange &r : ranges)
        if (r.knob == knob) return r;
    throw std::runtime_error("no knob '" + knob + "'");
}

inline std::vector<std::string> knob_names(const std::vector<KnobRange> &ranges) {
    std::vector<std::string> names;
    for (const KnobRange &r : ranges) names.push_back(r.knob);
    return names;
}

// What a machine file may name: kernels, and the knobs of each backend family.
struct ScheduleVocabulary {
    std::vector<std::string> kernels;
    std::vector<std::string> cpu_knobs, gpu_knobs;
    // runtime.<kernel>.<knob>: thresholds the runtime reads (cmake/Bn2dKernels.cmake puts them
    // in the kernel table), not schedule knobs.
    std::vector<std::string> runtime_knobs;
};

class ScheduleParams {
public:
    ScheduleParams() = default;

    // An empty path means "all defaults".
    static ScheduleParams load(const std::string &path) {
        ScheduleParams p;
        p.path_ = path;
        if (path.empty()) return p;
        std::ifstream in(path);
        if (!in) throw std::runtime_error("schedule params: cannot open '" + path + "'");
        std::string line;
        int line_no = 0;
        while (std::getline(in, line)) {
            ++line_no;
            auto hash = line.find('#');
            if (hash != std::string::npos) line.erase(hash);
            auto eq = line.find('=');
            std::string key = trim(line.substr(0, eq));
            if (key.empty()) continue;
            if (eq == std::string::npos) throw p.error(line_no, "expected 'key = value'");
            auto [it, inserted] = p.values_.emplace(key, Entry{trim(line.substr(eq + 1)), line_no});
            if (!inserted)
                throw p.error(line_no, "'" + key + "' is already set on line " +
                                           std::to_string(it->second.line));
        }
        return p;
    }

    // Every key names a known backend, kernel (or *) and knob of that backend.
    void validate(const ScheduleVocabulary &vocab) const {
        for (const auto &[key, entry] : values_) {
            auto dot1 = key.find('.'), dot2 = key.rfind('.');
            if (dot1 == std::string::npos || dot1 == dot2)
                throw error(entry.line, "'" + key + "' is not <backend>.<kernel>.<knob>");
            const std::string backend = key.substr(0, dot1);
            const std::string kernel = key.substr(dot1 + 1, dot2 - dot1 - 1);
            const std::string knob = key.substr(dot2 + 1);
            const std::vector<std::string> *knobs = nullptr;
            if (backend == "cpu") knobs = &vocab.cpu_knobs;
            if (backend == "cuda" || backend == "opencl" || backend == "gpu")
                knobs = &vocab.gpu_knobs;
            if (backend == "runtime") knobs = &vocab.runtime_knobs;
            if (!knobs)
                throw error(entry.line, "unknown backend '" + backend + "' in '" + key +
                                            "' (expected cpu, cuda, opencl, gpu or runtime)");
            if (kernel != "*" && !contains(vocab.kernels, kernel))
                throw error(entry.line, "unknown kernel '" + kernel + "' in '" + key +
                                            "' (expected * or one of " + join(vocab.kernels) + ")");
            if (!contains(*knobs, knob))
                throw error(entry.line, "unknown knob '" + knob + "' in '" + key + "' (" + backend +
                                            " knobs: " + join(*knobs) + ")");
            parse_int(key, entry);
        }
    }

    // The value of a knob for a kernel on a backend (cpu, cuda or opencl), or `fallback`.
    int get(const std::string &backend, const std::string &kernel, const std::string &knob,
            int fallback) const {
        for (const std::string &family : lookup_order(backend)) {
            for (const std::string &key :
                 {family + "." + kernel + "." + knob, family + ".*." + knob}) {
                auto it = values_.find(key);
                if (it == values_.end()) continue;
                used_.insert(key);
                return parse_int(key, it->second);
            }
        }
        return fallback;
    }

    // Fails if a key naming this kernel on this backend (or its gpu family) was never read by
    // the kernel's schedule: a knob set where it has no effect.
    void check_all_read(const std::string &backend, const std::string &kernel) const {
        for (const std::string &family : lookup_order(backend)) {
            const std::string prefix = family + "." + kernel + ".";
            for (const auto &[key, entry] : values_) {
                if (key.rfind(prefix, 0) == 0 && !used_.count(key))
                    throw error(entry.line, "'" + key + "' is not read by the " + backend + " " +
                                                kernel + " schedule");
            }
        }
    }

    const std::string &path() const { return path_; }

    // Every `key = value` of the file, in key order (the tuner copies what it does not tune).
    std::vector<std::pair<std::string, std::string>> items() const {
        std::vector<std::pair<std::string, std::string>> out;
        for (const auto &[key, entry] : values_) out.emplace_back(key, entry.value);
        return out;
    }

private:
    struct Entry {
        std::string value;
        int line;
    };

    int parse_int(const std::string &key, const Entry &entry) const {
        try {
            size_t end = 0;
            int v = std::stoi(entry.value, &end);
            if (end == entry.value.size()) return v;
        } catch (const std::exception &) {
        }
        throw error(entry.line, "'" + key + "' is not an integer: '" + entry.value + "'");
    }

    static std::vector<std::string> lookup_order(const std::string &backend) {
        if (backend == "cpu") return {"cpu"};
        return {backend, "gpu"};
    }

    std::runtime_error error(int line, const std::string &what) const {
        return std::runtime_error(path_ + ":" + std::to_string(line) + ": " + what);
    }

    static bool contains(const std::vector<std::string> &v, const std::string &s) {
        for (const std::string &x : v)
            if (x == s) return true;
        return false;
    }
    static std::string join(const std::vector<std::string> &v) {
        std::string out;
        for (const std::string &x : v) out += (out.empty() ? "" : ", ") + x;
        return out;
    }
    static std::string trim(const std::string &s) {
        auto b = s.find_first_not_of(" \t\r");
        auto e = s.find_last_not_of(" \t\r");
        return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    }

    std::string path_;
    std::map<std::string, Entry> values_;
    mutable std::set<std::string> used_;
};

}  // namespace bn2d
