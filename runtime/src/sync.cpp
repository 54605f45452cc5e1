// SyncBatchNorm2d: BatchNorm2d's training steps with the statistics of every process of a group
// (bn2d/sync_batchnorm2d.h). The kernels are the single-process algorithm split where the
// processes communicate (generators/bn2d_algorithm.h, "Synchronized batch norm").
//
// Each collective step runs in three phases, so that a failure anywhere fails everywhere and
// nothing is committed unless every process succeeded:
//   1. local: validate and run this process's kernels into scratch; an error is kept, not thrown
//   2. agree: every process's status, call, channel count and batch size, in one all-gather of
//      256 bytes each; every process throws the first failure's message if there is one
//   3. exchange the statistics, run the kernels that use them, agree again, commit
#include "bn2d/sync_batchnorm2d.h"

#include <cstring>
#include <optional>
#include <vector>

#include "bn2d/device.h"
#include "internal.h"
#include "module_state.h"

namespace bn2d {
namespace {

[[noreturn]] void fail(const std::string &msg) { throw Error("SyncBatchNorm2d: " + msg); }

// One process's state of a collective call, as the others see it.
struct Status {
    char call[32];
    int64_t channels;
    int64_t count;  // values per channel in this process's batch
    int32_t failed;
    char message[204];
};
static_assert(sizeof(Status) == 256, "one small message per process");

template<size_t N>
void copy_text(char (&dst)[N], const std::string &src) {
    std::string s = src;
    if (s.size() >= N) s = s.substr(0, N - 4) + "...";
    std::memset(dst, 0, N);
    std::memcpy(dst, s.data(), s.size());
}

std::string text(const char *s, size_t n) { return std::string(s, strnlen(s, n)); }

// What is wrong with a communicator's rank and size ("" when nothing), for the error of the call
// that met it.
std::string group_error(const Communicator &comm) {
    const int rank = comm.rank(), size = comm.size();
    std::string what;
    if (size < 1)
        what = "size " + std::to_string(size) + " (a group has at least 1 process)";
    else if (rank < 0)
        what = "rank " + std::to_string(rank) + " (ranks start at 0)";
    else if (rank >= size)
        what = "rank " + std::to_string(rank) + ", not below its size " + std::to_string(size) +
               " (ranks are 0 .. size - 1)";
    return what.empty() ? "" : "the " + comm.name() + " communicator reports " + what;
}

// A collective of the application's communicator, its failure named with the call and the step
// (the communicator's own message alone does not say which of ours it was in).
template<typename F>
void collective(const Communicator &comm, const char *call, const char *step, F &&f) {
    try {
        f();
    } catch (const std::exception &e) {
        fail(std::string(call) + ": the " + comm.name() + " communicator's " + step +
             " failed on rank " + std::to_string(comm.rank()) + " of " +
             std::to_string(comm.size()) + ": " + e.what());
    }
}

// Phase 2: every process learns every other's status. Returns the group's total count.
int64_t agree(Communicator &comm, const char *call, int64_t C, int64_t count,
              const std::string &error) {
    Status mine{};
    copy_text(mine.call, call);
    mine.channels = C;
    mine.count = count;
    mine.failed = error.empty() ? 0 : 1;
    copy_text(mine.message, error);
    const int P = comm.size();
    std::vector<Status> all(static_cast<size_t>(P));
    collective(comm, call, "all_gather_bytes (every process's status)",
               [&] { comm.all_gather_bytes(&mine, all.data(), sizeof(Status)); });

    const std::string here = text(mine.call, sizeof mine.call);
    for (int r = 0; r < P; ++r) {
        const std::string theirs = text(all[r].call, sizeof all[r].call);
        if (theirs != here)
            fail("the processes are in different calls: rank " + std::to_string(comm.rank()) +
                 " in " + here + ", rank " + std::to_string(r) + " in " + theirs +
                 " (every process of the group must make the same training calls in the same "
                 "order)");
    }
    std::vector<int> failed;
    for (int r = 0; r < P; ++r)
        if (all[r].failed) failed.push_back(r);
    if (!failed.empty()) {
        const int r = failed.front();
        std::string also;
        for (size_t i = 1; i < failed.size(); ++i)
            also += (i == 1 ? " (also on rank " : ", ") + std::to_string(failed[i]);
        if (!also.empty()) also += ")";
        fail(here + " failed on rank " + std::to_string(r) + " of " + std::to_string(P) + also +
             ": " + text(all[r].message, sizeof all[r].message));
    }
    int64_t total = 0;
    for (int r = 0; r < P; ++r) {
        if (all[r].channels != C)
            fail("num_features differ across the group: rank " + std::to_string(comm.rank()) +
                 " has " + std::to_string(C) + ", rank " + std::to_string(r) + " has " +
                 std::to_string(all[r].channels));
        if (__builtin_add_overflow(total, all[r].count, &total))
            fail("the group's values per channel overflow int64");
    }
    return total;
}

void check_memory(const Communicator &comm, Device module) {
    const Device m = comm.memory();
    if (m != Device::CPU && m != module)
        fail(std::string("the ") + comm.name() + " communicator exchanges " + device_name(m) +
             " memory but the module is on " + device_name(module) + " (use to(" + device_name(m) +
             "))");
}

// The address a communicator reads and writes a scratch buffer at: the host copy (brought from
// the device first when `download`) when it works on the host, else the device pointer.
double *exchange_address(Buf &b, Device module, const Communicator &comm, bool download) {
    if (comm.memory() == Device::CPU) {
        if (download) detail::sync_to_host(b, module, "copying statistics to the host");
        return static_cast<double *>(b.data());
    }
    device_synchronize(module);  // the kernels that wrote it, on the module's stream
    return reinterpret_cast<double *>(detail::app_device_handle(b, module));
}

// After a host-side exchange wrote `b`: back to the module's device (a no-op on the CPU).
void upload(Buf &b, Device module, const Communicator &comm) {
    if (comm.memory() == Device::CPU)
        detail::sync_to_device(b, module, "copying statistics to the device");
}

void zero(Buf &b, Device module) {
    if (b.number_of_elements() == 0) return;
    std::memset(b.data(), 0, b.size_in_bytes());
    detail::sync_to_device(b, module, "clearing statistics on the device");
}

void check_communicator(const char *call, const Communicator *comm) {
    if (!comm) fail(std::string(call) + ": the communicator is null");
    if (const std::string e = group_error(*comm); !e.empty()) fail(std::string(call) + ": " + e);
}

}  // namespace

// The statistics of every process of the communicator's group.
class SyncBatchNorm2d::GroupStatistics final : public BatchNorm2d::Statistics {
public:
    explicit GroupStatistics(std::shared_ptr<Communicator> comm) : comm_(std::move(comm)) {}
    const char *module_name() const override { return "SyncBatchNorm"; }
    Communicator &communicator() const { return *comm_; }
    void train_forward(BatchNorm2d &m, const Tensor &x, const Tensor *residual,
                       const Tensor &out) override;
    void train_backward(BatchNorm2d &m, const Tensor &grad_out, const Tensor &grad_input,
                        const Tensor *grad_residual, BackwardMask mask) override;

private:
    // (C, 3, processes) every process's {count, mean, M2}, on the module's device.
    Buf &gathered_buffer(const State &s) {
        const int P = comm_->size();
        if (!gathered_.data() || gathered_device_ != s.device || gathered_.dim(2).extent() != P) {
            gathered_ = s.scratch(3, P);
            gathered_device_ = s.device;
        }
        return gathered_;
    }

    std::shared_ptr<Communicator> comm_;
    Buf gathered_;
    Device gathered_device_ = Device::CPU;
};

SyncBatchNorm2d::SyncBatchNorm2d(int64_t num_features, std::shared_ptr<Communicator> communicator,
                                 const Options &options)
    : BatchNorm2d(num_features, options) {
    check_communicator("constructor", communicator.get());
    set_statistics(std::make_shared<GroupStatistics>(std::move(communicator)));
}

SyncBatchNorm2d::SyncBatchNorm2d(BatchNorm2d &&module) : BatchNorm2d(std::move(module)) {}

SyncBatchNorm2d SyncBatchNorm2d::convert(BatchNorm2d &&module,
                                         std::shared_ptr<Communicator> communicator) {
    check_communicator("convert", communicator.get());  // before the module is moved from
    SyncBatchNorm2d synced(std::move(module));
    synced.set_statistics(std::make_shared<GroupStatistics>(std::move(communicator)));
    return synced;
}

// Every SyncBatchNorm2d is given a GroupStatistics (constructor, convert).
Communicator &SyncBatchNorm2d::communicator() const {
    return static_cast<GroupStatistics &>(statistics()).communicator();
}

void SyncBatchNorm2d::GroupStatistics::train_forward(BatchNorm2d &m, const Tensor &x,
                                                     const Tensor *residual, const Tensor &out) {
    State &s = state(m);
    Communicator &comm = *comm_;
    check_communicator("forward", &comm);  // its rank and size may have changed since
    const size_t C = static_cast<size_t>(s.C);
    // 1. This process's {count, mean, M2} per channel (zeros for an empty batch: the merge
    // skips a count of 0).
    std::optional<ForwardPlan> plan;
    std::string error;
    int64_t count = 0;
    double *partial = nullptr;
    try {
        plan.emplace(plan_forward(m, x, residual, out, true));
        check_memory(comm, s.device);
        s.partial_buffer();
        gathered_buffer(s);
        s.merged_var_buffer();
        if (!plan->empty) {
            count = plan->per_channel;
            detail::run_sync_stats(plan->call(s, x), plan->hx, s.partial);
        } else {
            zero(s.partial, s.device);
        }
        partial = exchange_address(s.partial, s.device, comm, true);
    } catch (const Error &e) {
        error = e.what();
    }
    // 2.
    const int64_t total = agree(comm, "forward", s.C, count, error);
    if (total == 1)
        fail("expected more than 1 value per channel when training, got 1 over the group's " +
             std::to_string(comm.size()) + " processes");
    if (C == 0 || total == 0) {  // nothing to normalize anywhere; the batch is still counted
        record_forward(m, *plan, x, residual != nullptr, out, total);
        return;
    }
    // 3. Every process merges the same values in the same order: the same statistics.
    double *gathered = exchange_address(gathered_, s.device, comm, false);
    collective(comm, "forward", "all_gather (every process's count, mean and M2)",
               [&] { comm.all_gather(partial, gathered, 3 * C); });
    upload(gathered_, s.device, comm);
    try {
        const Tensor per_channel_type(nullptr, detail::per_channel_dtype(x.dtype()),
                                      {1, s.C, 1, 1});
        detail::run_sync_merge({s.device, detail::Layout::nchw, per_channel_type}, "sync_fwd",
                               gathered_, s.running_mean, s.running_var, s.eps,
                               {s.saved_mean_next, s.saved_invstd_next, s.running_mean_next,
                                s.running_var_next, plan->factor},
                               s.merged_var);
        // The normalization with the merged statistics is eval forward's.
        if (!plan->empty) {
            detail::ForwardBuffers normalize = plan->buffers(s);
            normalize.running_mean = s.saved_mean_next;
            normalize.running_var = s.merged_var;
            detail::run_eval_forward(plan->call(s, x), normalize);
        }
    } catch (const Error &e) {
        error = e.what();
    }
    agree(comm, "forward (after the exchange)", s.C, 0, error);
    if (plan->update_running) {
        s.commit(s.running_mean, s.running_mean_next);
        s.commit(s.running_var, s.running_var_next);
    }
    std::swap(s.saved_mean, s.saved_mean_next);
    std::swap(s.saved_invstd, s.saved_invstd_next);
    record_forward(m, *plan, x, residual != nullptr, out, total);
}

void SyncBatchNorm2d::GroupStatistics::train_backward(BatchNorm2d &m, const Tensor &grad_out,
                                                      const Tensor &grad_input,
                                                      const Tensor *grad_residual,
                                                      BackwardMask mask) {
    State &s = state(m);
    Communicator &comm = *comm_;
    check_communicator("backward", &comm);
    const size_t C = static_cast<size_t>(s.C);
    // 1. This process's parameter gradients (its own, as in PyTorch) and its sums.
    std::optional<BackwardPlan> plan;
    std::string error;
    int64_t count = 0;
    double *sums = nullptr;
    try {
        plan.emplace(plan_backward(m, grad_out, grad_input, grad_residual, mask));
        if (!s.forward_synced())
            fail("a training backward needs the synchronized forward before it (the module "
                 "became synchronized after its last forward): run forward() again");
        check_memory(comm, s.device);
        Buf &g = s.grad_sums_buffer();
        if (plan->run) {
            count = grad_out.numel() / s.C;
            residual_gradient(m, *plan);
            const detail::BackwardBuffers b{
                plan->hx,       plan->incoming(),   plan->relu_out(), s.saved_mean,
                s.saved_invstd, s.weight,           nullptr,          s.grad_weight,
                s.grad_bias,    s.grad_weight_next, s.grad_bias_next, g};
            detail::run_backward(plan->call(s), true, true, s.eps, b);
        } else {
            zero(g, s.device);
        }
        sums = exchange_address(g, s.device, comm, true);
    } catch (const Error &e) {
        error = e.what();
    }
    // 2.
    agree(comm, "backward", s.C, count, error);
    if (C == 0) return;
    // 3. grad_input from the group's sums.
    Buf &g = s.grad_sums;
    collective(comm, "backward", "all_reduce_sum (the gradient sums)",
               [&] { comm.all_reduce_sum(sums, 2 * C); });
    upload(g, s.device, comm);
    try {
        if (plan->run) {
            detail::BackwardBuffers b{};
            b.x = plan->hx;
            b.grad_out = plan->incoming();
            b.relu_out = plan->relu_out();
            b.mean = s.saved_mean;
            b.stat = s.saved_invstd;
            b.weight = s.weight;
            b.grad_input = plan->hdx.raw_buffer();
            detail::run_sync_grad_input(plan->call(s), "sync_bwd", b, g,
                                        static_cast<double>(s.forward_count));
        }
    } catch (const Error &e) {
        error = e.what();
    }
    agree(comm, "backward (after the exchange)", s.C, 0, error);
    if (plan->run && plan->params) {
        s.commit(s.grad_weight, s.grad_weight_next);
        s.commit(s.grad_bias, s.grad_bias_next);
    }
}

}  // namespace bn2d
