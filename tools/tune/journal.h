// <out>.journal: every candidate measured, appended as it is measured, so that an interrupted
// run, started again with the same options, replays what it had measured (instantly) and
// continues with the budget it had left. Its first line is the run's configuration
// (Tuner::config_line): a journal written with other options is started afresh.
#pragma once

#include <fstream>
#include <map>
#include <string>

#include "kernels.h"

namespace bn2d::tune {

class Journal {
public:
    // Reads `path` if its first line is `config` (and says so), else starts it afresh; then
    // appends to it.
    void open(const std::string &path, const std::string &config);
    // An earlier run's measurement of `kernel`'s candidate `key`, or nullptr.
    const Eval *find(const std::string &kernel, const std::string &key) const;
    // Records e, and the run's elapsed seconds (what a resumed run starts counting from).
    void append(const std::string &kernel, const std::string &key, const Eval &e, double elapsed);
    // The seconds the earlier runs had used.
    double prior_elapsed() const { return prior_elapsed_; }

private:
    std::string path_;
    std::map<std::string, Eval> evals_;  // by "<kernel> <key>"
    std::ofstream out_;
    double prior_elapsed_ = 0;
};

}  // namespace bn2d::tune
