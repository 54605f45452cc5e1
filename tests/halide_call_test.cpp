// Halide's user_context carries each call's error message to the call that raised it
// (runtime/src/internal.h, detail::HalideCall): from any thread, with several calls at once, and
// without taking messages that belong to no call of ours. White-box: the routing is internal.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "HalideRuntime.h"
#include "bn2d/bn2d.h"
#include "internal.h"

namespace bn2d::detail {
namespace {

std::string error_of(HalideCall &call, int rc) {
    try {
        call.check(rc, "call");
    } catch (const Error &e) {
        return e.what();
    }
    return "";
}

// Errors reported from other threads (as a parallel kernel's tasks report them) reach the call
// whose user_context they carry, while other calls are in flight on other threads.
TEST(HalideCall, EachCallGetsItsOwnMessageFromAnyThread) {
    constexpr int kCalls = 8;
    std::vector<std::string> got(kCalls);
    std::vector<std::thread> callers;
    for (int i = 0; i < kCalls; ++i) {
        callers.emplace_back([i, &got] {
            HalideCall call;
            const std::string message = "failure of call " + std::to_string(i);
            // The report comes from a worker, not from the thread that made the call.
            std::thread worker([&] { halide_error(call.user_context(), message.c_str()); });
            worker.join();
            got[i] = error_of(call, -1);
        });
    }
    for (std::thread &t : callers) t.join();
    for (int i = 0; i < kCalls; ++i)
        EXPECT_EQ(got[i], "call: failure of call " + std::to_string(i));
}

// The first message of a call is the one it reports; a later call starts clean.
TEST(HalideCall, FirstMessageWinsAndNothingCarriesOver) {
    {
        HalideCall call;
        halide_error(call.user_context(), "first\n");
        halide_error(call.user_context(), "second");
        EXPECT_EQ(error_of(call, -3), "call: first");
        EXPECT_EQ(error_of(call, 0), "");
    }
    HalideCall next;
    EXPECT_EQ(error_of(next, -2), "call: Halide error code -2");
}

// A user_context that is not a live call of ours (an application's pipeline sharing this
// runtime, or null) is not taken for one: its message goes to stderr, not into a call.
TEST(HalideCall, ForeignUserContextsAreLeftAlone) {
    init_runtime();
    int applications_own = 42;
    HalideCall call;
    ::testing::internal::CaptureStderr();
    halide_error(&applications_own, "the application's error");
    halide_error(nullptr, "an error outside any call");
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("the application's error"), std::string::npos) << err;
    EXPECT_NE(err.find("an error outside any call"), std::string::npos) << err;
    EXPECT_EQ(applications_own, 42);
    EXPECT_EQ(error_of(call, -1), "call: Halide error code -1");
    EXPECT_EQ(HalideCall::from(&applications_own), nullptr);
    EXPECT_EQ(HalideCall::from(call.user_context()), &call);
}

}  // namespace
}  // namespace bn2d::detail
