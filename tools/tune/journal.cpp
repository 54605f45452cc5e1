// The journal: its format (config, eval, fail and elapsed lines), read back and appended to.
#include "journal.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "tuner.h"

namespace bn2d::tune {

// The options a journal's measurements hold for: a journal written with others is not replayed.
std::string Tuner::config_line() const {
    std::ostringstream s;
    s << "config backend=" << o_.backend << " target=" << target_.to_string()
      << " search=" << o_.search << " seed=" << o_.seed << " reps=" << o_.reps << " dtypes=";
    for (auto &d : o_.dtypes) s << d << ";";
    s << " problems=";
    for (auto &p : shapes_) s << p.name() << ";";
    s << " base=";
    for (auto &[k, v] : base_.items()) s << k << "=" << v << ";";
    return s.str();
}

void Journal::open(const std::string &path, const std::string &config) {
    path_ = path;
    std::ifstream in(path_);
    std::string line;
    bool matches = false;
    if (in && std::getline(in, line)) matches = line == config;
    if (matches) {
        while (std::getline(in, line)) {
            std::istringstream w(line);
            std::string tag, kernel, key;
            w >> tag;
            if (tag == "elapsed") {
                w >> prior_elapsed_;
            } else if (tag == "eval" && (w >> kernel >> key)) {
                Eval e;
                w >> e.score;
                double r;
                while (w >> r) e.ratios.push_back(r);
                evals_[kernel + " " + key] = e;
            } else if (tag == "fail" && (w >> kernel >> key)) {
                Eval e;
                std::getline(w, e.error);
                evals_[kernel + " " + key] = e;
            }
        }
        std::fprintf(stderr, "resuming %s: %zu candidates measured, %.0f s used\n", path_.c_str(),
                     evals_.size(), prior_elapsed_);
    } else if (in) {
        std::fprintf(stderr, "%s is from other options: starting afresh\n", path_.c_str());
    }
    in.close();
    out_.open(path_, matches ? std::ios::app : std::ios::trunc);
    if (!matches) out_ << config << "\n";
    out_.flush();
}

const Eval *Journal::find(const std::string &kernel, const std::string &key) const {
    auto it = evals_.find(kernel + " " + key);
    return it == evals_.end() ? nullptr : &it->second;
}

void Journal::append(const std::string &kernel, const std::string &key, const Eval &e,
                     double elapsed) {
    if (e.error.empty()) {
        out_ << "eval " << kernel << " " << key << " " << e.score;
        for (double r : e.ratios) out_ << " " << r;
    } else {
        std::string msg = e.error;
        std::replace(msg.begin(), msg.end(), '\n', ' ');
        out_ << "fail " << kernel << " " << key << " " << msg;
    }
    out_ << "\nelapsed " << elapsed << "\n";
    out_.flush();
}

}  // namespace bn2d::tune
