// What a run leaves: the machine file (the base's keys with the tuned ones, under a header that
// quotes the final run) and <report>.json, which scripts/tune_report.py draws.
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tuner.h"

namespace bn2d::tune {

namespace {

// A path inside the source tree, relative to it (what the header and report show).
std::string relative(const std::string &path) {
    const std::string root = std::string(BN2D_SOURCE_DIR) + "/";
    return path.rfind(root, 0) == 0 ? path.substr(root.size()) : path;
}

std::string today() {
    std::time_t t = std::time(nullptr);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
    return buf;
}

}  // namespace

void Tuner::write_outputs(bool baselines_measured) {
    const std::string halide_version = std::to_string(HALIDE_VERSION_MAJOR) + "." +
                                       std::to_string(HALIDE_VERSION_MINOR) + "." +
                                       std::to_string(HALIDE_VERSION_PATCH);
    std::map<std::string, Candidate> tuned;
    for (const Result &r : results_) tuned[r.kernel] = r.tuned;

    std::ostringstream h;
    h << "# Tuned schedule parameters for " << o_.machine
      << ", written by scripts/tune.sh (rerun it\n"
      << "# rather than editing by hand). Build with -DBN2D_SCHEDULE_MACHINE=" << o_.machine
      << ".\n"
      << "# Key and knob reference: schedules/machines/default.params.\n"
      << "#   machine  " << o_.machine << " (" << std::thread::hardware_concurrency()
      << " threads), target " << target_.to_string() << "\n"
      << "#   date     " << today() << ", Halide " << halide_version << "\n"
      << "#   tuned    backend " << o_.backend << ", search " << o_.search << ", budget "
      << o_.budget_seconds << " s (used " << int(elapsed()) << " s), dtypes ";
    for (size_t i = 0; i < o_.dtypes.size(); ++i) h << (i ? "," : "") << o_.dtypes[i];
    h << ", base " << relative(o_.base) << "\n"
      << "# Time / floor per kernel and problem, default vs tuned"
      << (baselines_measured ? " vs Halide's autoschedulers" : "")
      << ", measured in one run\n# (medians, interleaved with the floor):\n";
    char row[512];
    std::snprintf(row, sizeof row, "#   %-15s %-22s %8s %8s", "kernel", "problem", "default",
                  "tuned");
    h << row;
    if (baselines_measured)
        for (const std::string &as : o_.autoschedulers)
            h << " " << std::string(14 - std::min<size_t>(14, as.size()), ' ') << as;
    h << "\n";
    for (const Result &r : results_) {
        for (size_t pi = 0; pi < r.problems.size(); ++pi) {
            std::snprintf(row, sizeof row, "#   %-15s %-22s %7.2fx %7.2fx", r.kernel.c_str(),
                          r.problems[pi].c_str(), r.default_ratio[pi], r.tuned_ratio[pi]);
            h << row;
            if (baselines_measured) {
                for (const std::string &as : o_.autoschedulers) {
                    auto it = r.auto_ratio.find(as);
                    if (it == r.auto_ratio.end() || std::isnan(it->second[pi]))
                        std::snprintf(row, sizeof row, " %14s", "failed");
                    else
                        std::snprintf(row, sizeof row, " %13.2fx", it->second[pi]);
                    h << row;
                }
            }
            h << "\n";
        }
        if (r.kept_default)
            h << "#   (" << r.kernel
              << ": the search's best lost to the default in this run: default kept)\n";
    }
    std::ofstream out(o_.out);
    out << h.str() << "\n";
    for (const auto &[key, v] : machine_keys(tuned)) out << key << " = " << v << "\n";
    if (!out) throw std::runtime_error("cannot write " + o_.out);
    out.close();

    // The report's data (scripts/tune_report.py draws the markdown table and the plot).
    std::ofstream js(o_.report + ".json");
    auto q = [](const std::string &s) {
        std::string r = "\"";
        for (char c : s) {
            if (c == '"' || c == '\\') r += '\\';
            if (c == '\n') {
                r += "\\n";
                continue;
            }
            r += c;
        }
        return r + "\"";
    };
    js << "{\n  \"machine\": " << q(o_.machine) << ",\n  \"target\": " << q(target_.to_string())
       << ",\n  \"date\": " << q(today()) << ",\n  \"halide\": " << q(halide_version)
       << ",\n  \"backend\": " << q(o_.backend) << ",\n  \"search\": " << q(o_.search)
       << ",\n  \"budget_seconds\": " << o_.budget_seconds << ",\n  \"used_seconds\": " << elapsed()
       << ",\n  \"params_file\": " << q(relative(o_.out)) << ",\n  \"problems\": [";
    for (size_t i = 0; i < problems_.size(); ++i) js << (i ? ", " : "") << q(problems_[i].name());
    js << "],\n  \"kernels\": [\n";
    auto arr = [&](const std::vector<double> &v) {
        std::ostringstream s;
        s << "[";
        for (size_t i = 0; i < v.size(); ++i) {
            s << (i ? ", " : "");
            if (std::isnan(v[i]))
                s << "null";  // a baseline that failed on this problem
            else
                s << v[i];
        }
        return s.str() + "]";
    };
    for (size_t ki = 0; ki < results_.size(); ++ki) {
        const Result &r = results_[ki];
        js << "    {\"kernel\": " << q(r.kernel) << ", \"problems\": [";
        for (size_t i = 0; i < r.problems.size(); ++i) js << (i ? ", " : "") << q(r.problems[i]);
        js << "], \"default\": " << q(candidate_key(r.default_values))
           << ", \"tuned\": " << q(candidate_key(r.tuned))
           << ", \"kept_default\": " << (r.kept_default ? "true" : "false")
           << ", \"measured\": " << r.measured << ", \"replayed\": " << r.replayed
           << ",\n     \"search_default_score\": " << r.default_score
           << ", \"search_best_score\": " << r.search_best
           << ",\n     \"ratios\": {\"default\": " << arr(r.default_ratio)
           << ", \"tuned\": " << arr(r.tuned_ratio);
        for (const auto &[as, v] : r.auto_ratio) js << ", " << q(as) << ": " << arr(v);
        js << "},\n     \"autoscheduler_errors\": {";
        bool first = true;
        for (const auto &[as, e] : r.auto_error) {
            js << (first ? "" : ", ") << q(as) << ": " << q(e.substr(0, 300));
            first = false;
        }
        js << "},\n     \"trace\": [";
        for (size_t i = 0; i < r.trace.size(); ++i)
            js << (i ? ", " : "") << "[" << r.trace[i].first << ", "
               << (std::isfinite(r.trace[i].second) ? r.trace[i].second : -1) << "]";
        js << "]}" << (ki + 1 < results_.size() ? "," : "") << "\n";
    }
    js << "  ]\n}\n";
}
}  // namespace bn2d::tune
