// Schedule parameters as data: a per-machine `key = value` file read at generator time.
//
// Schedules ask for a value with a default; a machine file in schedules/machines/ overrides
// any of them. Keys are `<backend>.<kernel>.<knob>`, e.g. `cpu.train_fwd.vector_lanes`, with a
// `<backend>.*.<knob>` fallback. Unknown keys in a file are an error, so a typo in a tuned file
// cannot silently fall back to a default (the generator reports which keys it never read).
#pragma once

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>

namespace bn2d {

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
            if (eq == std::string::npos)
                throw std::runtime_error(path + ":" + std::to_string(line_no) +
                                         ": expected 'key = value'");
            p.values_[key] = trim(line.substr(eq + 1));
        }
        return p;
    }

    // get("cpu", "train_fwd", "vector_lanes", 16) looks up cpu.train_fwd.vector_lanes, then
    // cpu.*.vector_lanes, then returns the default.
    int get(const std::string &backend, const std::string &kernel, const std::string &knob,
            int fallback) const {
        for (const std::string &key :
             {backend + "." + kernel + "." + knob, backend + ".*." + knob}) {
            auto it = values_.find(key);
            if (it == values_.end()) continue;
            used_.insert(key);
            try {
                size_t end = 0;
                int v = std::stoi(it->second, &end);
                if (end != it->second.size()) throw std::invalid_argument("trailing");
                return v;
            } catch (const std::exception &) {
                throw std::runtime_error(path_ + ": '" + key + "' is not an integer: '" +
                                         it->second + "'");
            }
        }
        return fallback;
    }

    // Keys of this kernel (`<backend>.<kernel>.*`) that its schedule never read: typos.
    std::string unused_keys(const std::string &backend, const std::string &kernel) const {
        const std::string prefix = backend + "." + kernel + ".";
        std::string out;
        for (const auto &[key, value] : values_) {
            if (key.rfind(prefix, 0) == 0 && !used_.count(key))
                out += (out.empty() ? "" : ", ") + key;
        }
        return out;
    }

    const std::string &path() const { return path_; }

private:
    static std::string trim(const std::string &s) {
        auto b = s.find_first_not_of(" \t\r");
        auto e = s.find_last_not_of(" \t\r");
        return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    }

    std::string path_;
    std::map<std::string, std::string> values_;
    mutable std::set<std::string> used_;
};

}  // namespace bn2d
