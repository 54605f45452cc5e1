// CPU schedules for the batchnorm2d pipelines (x86-64 SIMD, any ISA Halide targets).
//
// Memory-bound op, so the schedule is about DRAM passes:
//  * Per-channel fusion. A group of channels has its statistics (or gradient sums) computed
//    right before it is normalized, in the same parallel task, so the second read hits cache
//    instead of DRAM when the group fits (N*H*W*4 bytes per channel: 126 KB for the seed's
//    20x35x45; 1.6 MB for 32x112x112 comes back from L3). Training forward then moves ~1 read
//    + 1 write of the tensor from DRAM.
//  * Reductions vectorized along W by rfactor into `lanes * accumulators` partial sums (several
//    independent accumulator vectors hide the add latency), per block of `chunk` elements.
//  * Pointwise kernels (eval forward, eval grad_input): one task per batch item when there are
//    enough, else row chunks of all (h, c, n) cut into tasks of `grain` elements, so even
//    C = 3, N = 1 keeps every core busy.
//  * Pipelined groups (training forward): a task runs several channel groups in a row, and
//    each output pass prefetches the next group, so DRAM reads overlap the streaming writes.
// Measured on a 2-core Zen 4 VM against the floor (README, Performance (CPU)). Known weak
// spot: 7x7 planes, where the per-row cost of the rfactored reduction dominates 49-float rows.
//
// NHWC (channels_last) tensors get schedules of their own: C is innermost in memory, so every
// loop vectorizes over channels. The statistics are a parallel pass over blocks of rows, each
// block keeping a vector of partial sums per channel (L1-resident: C * 2 sums), then the
// normalization is a second, pointwise pass: two reads of x, as oneDNN's NHWC kernels do,
// because a channel's values are spread over the whole tensor.
// Tunables come from ScheduleParams (schedules/machines/*.params); defaults below.
#pragma once

#include <functional>

#include "Halide.h"
#include "bn2d_algorithm.h"
#include "schedule_params.h"

namespace bn2d::cpu {

using Halide::Expr;
using Halide::Func;
using Halide::LoopLevel;
using Halide::RVar;
using Halide::TailStrategy;
using Halide::Target;
using Halide::Var;

// The knobs a machine file may set for CPU kernels (schedules/machines/*.params), their
// defaults and the values the tuner tries. The vector width is not a knob: a machine file
// applies to every ISA built, and each ISA's natural width is right for it.
inline const std::vector<KnobRange> kKnobRanges = {
    {"accumulators", 4, {1, 2, 4, 8}},
    {"chunk", 16384, {1024, 2048, 4096, 8192, 16384, 32768, 65536}},
    {"grain", 65536, {8192, 16384, 32768, 65536, 131072, 262144, 524288}},
    {"min_channels", 8, {1, 2, 4, 8, 16, 32}},
    {"min_batch", 8, {1, 2, 4, 8, 16, 32, 64}},
    {"block_rows", 0, {0, 16, 32, 64, 128, 256, 512, 1024}},
    {"pipelined_groups", 4, {1, 2, 4, 8, 16}},
};
inline const std::vector<std::string> kKnobs = knob_names(kKnobRanges);

// The knobs a schedule kernel's loops depend on (the tuner searches these, no others):
// NCHW statistics or gradient sums fused per channel group (train_*, eval_bwd) read
// accumulators, chunk, grain and min_channels; NCHW pointwise loops (eval_fwd, eval_bwd_input)
// chunk, grain and min_batch; NHWC loops grain, and their sums accumulators and block_rows.
// Not searched: pipelined_groups (the per-channel kernels' prefetch of the next group). The
// tuner measures JIT-compiled kernels, which have ordinary stores, and the prefetch pays only
// beside streaming stores (schedule_per_channel); set it from the benchmark.
inline std::vector<std::string> searched_knobs(const std::string &kernel) {
    const auto [op, layout] = parse_schedule_kernel(kernel);
    if (layout == Layout::nhwc) {
        if (op == "eval_fwd") return {"grain"};
        return {"accumulators", "block_rows", "grain"};
    }
    if (op == "eval_fwd") return {"chunk", "grain", "min_batch"};
    if (op == "eval_bwd") return {"accumulators", "chunk", "grain", "min_channels", "min_batch"};
    return {"accumulators", "chunk", "grain", "min_channels"};
}

struct Knobs {
    int lanes;             // vector width in floats
    int accumulators;      // independent accumulator vectors per reduction
    int chunk;             // W elements per row chunk in pointwise kernels
    int grain;             // minimum elements per parallel task (amortizes task overhead)
    int min_channels;      // below this many channels, parallelize inside channels too
    int min_batch;         // pointwise kernels: from this many batch items, one task per item
    int block_rows;        // NHWC: rows (pixels) per block of partial sums; 0: grain / C
    int pipelined_groups;  // NCHW per-channel kernels: channel groups per parallel task, each
                           // prefetching the next group's inputs; 1: no prefetch
};

inline Knobs knobs(const ScheduleParams &sp, const std::string &kernel, const Target &t) {
    auto get = [&](const char *knob) {
        return sp.get("cpu", kernel, knob, knob_range(kKnobRanges, knob).fallback);
    };
    Knobs k;
    k.lanes = t.natural_vector_size<float>();
    k.accumulators = get("accumulators");
    k.chunk = get("chunk");
    k.grain = get("grain");
    k.min_channels = get("min_channels");
    k.min_batch = get("min_batch");
    k.block_rows = get("block_rows");
    k.pipelined_groups = get("pipelined_groups");
    if (k.lanes < 1 || k.accumulators < 1 || k.chunk < k.lanes || k.grain < 1 || k.block_rows < 0 ||
        k.pipelined_groups < 1)
        throw std::runtime_error("cpu." + kernel + ": need lanes >= 1, accumulators >= 1, " +
                                 "chunk >= lanes, grain >= 1, block_rows >= 0, " +
                                 "pipelined_groups >= 1");
    return k;
}

// Per-channel sums computed at `at`, vectorized along W through an rfactor into
// `lanes * accumulators` lanes, and cut along W into blocks of `chunk` elements. Two
// rfactors: the blocks' sums (blk, c), then inside each block the lanes (u), computed per block
// so that their storage is a constant `lanes * accumulators` values at constant indices, which
// LLVM keeps in registers across the block's loops (one rfactor over both left the lanes of all
// blocks in memory: a load and a store of every accumulator per vector of x, measured 47% of
// training forward's time on 32x64x112x112). The blocks run in parallel where `split_channel`
// holds (few channels: the parallelism has to come from inside a channel).
// Two-level sums (ChannelSums::rows): a row's U float32 partial sums are computed where the
// row is added, in vector registers (U / lanes vectors per sum), and added into U float64
// lanes that stay in registers across the rows; the lanes are reduced once per block of rows.
// The rows of a channel are cut into blocks of about `chunk` values, an rfactor whose blocks
// run in parallel where `split_channel` holds.
inline void schedule_row_sums(ChannelSums &s, const LoopLevel &at, const Knobs &k,
                              Expr split_channel) {
    Var lane("lane"), blk("blk"), c(s.sums.args()[0].name()), u(s.rows.args()[0].name());
    RVar rho("rho"), rhi("rhi");
    const int U = s.row_lanes, wide_lanes = std::max(1, k.lanes / 2);  // float64 per vector
    // Blocks of about `chunk` values, balanced: the last block's rows past the end are computed
    // (and dropped), fewer than one per block.
    Expr blocks_per_channel = Halide::cast<int>(Halide::min(
        (Halide::cast<int64_t>(s.H) * s.W + k.chunk - 1) / k.chunk, Halide::cast<int64_t>(s.H)));
    Expr rows_per_block = Halide::max(1, (s.H + blocks_per_channel - 1) / blocks_per_channel);
    s.sums.compute_at(at);
    Func blocks = s.sums.update()
                      .split(s.r.y, rho, rhi, rows_per_block, TailStrategy::GuardWithIf)
                      .rfactor(rho, blk);
    blocks.compute_at(at);
    blocks.update().reorder(s.r.x, rhi, s.r.z, blk, c);
    // The lanes per block (their storage U values at constant indices, kept in registers as
    // in schedule_channel_sums), reduced across the lanes once per block.
    Func lanes = blocks.update().rfactor(s.r.x, lane);
    if (split_channel.defined()) blocks.update().specialize(split_channel).parallel(blk);
    lanes.compute_at(blocks, blk).bound_extent(lane, U).vectorize(lane, wide_lanes).unroll(lane);
    lanes.update().reorder(lane, rhi, s.r.z).vectorize(lane, wide_lanes).unroll(lane);
    // One row per computation (Halide cannot prove it through the guarded split of the rows).
    Var h(s.rows.args()[1].name());
    s.rows.compute_at(lanes, rhi)
        .bound_extent(h, 1)
        .bound_extent(u, U)
        .vectorize(u, k.lanes)
        .unroll(u);
    s.rows.update(0).reorder(u, s.row_groups.x).vectorize(u, k.lanes).unroll(u);
    // The tail: whole vectors, then one predicated vector (GuardWithIf on an RVar).
    s.rows.update(1).vectorize(s.row_tail.x, k.lanes, TailStrategy::GuardWithIf);
}

inline void schedule_channel_sums(ChannelSums &s, const LoopLevel &at, const Knobs &k,
                                  Expr split_channel) {
    if (s.two_level()) return schedule_row_sums(s, at, k, split_channel);
    Var u("u"), blk("blk"), c(s.sums.args()[0].name());
    RVar rxo("rxo"), rxi("rxi"), rxb("rxb"), rxv("rxv");
    const int width = k.lanes * k.accumulators;
    // Vectors per block, at most the row's: a fixed factor would leave an epilogue loop of
    // empty guarded iterations on every short row.
    Expr block = Halide::min(std::max(1, k.chunk / width), (s.r.x.extent() + width - 1) / width);
    s.sums.compute_at(at);
    Func blocks = s.sums.update()
                      .split(s.r.x, rxo, rxi, width, TailStrategy::GuardWithIf)
                      .split(rxo, rxb, rxv, block, TailStrategy::GuardWithIf)
                      .rfactor(rxb, blk);
    blocks.compute_at(at);
    blocks.update().reorder(rxi, blk, c);
    // rfactor before specialize: a specialization copies the stage's definition as it is then.
    Func lanes = blocks.update().rfactor(rxi, u);
    if (split_channel.defined()) blocks.update().specialize(split_channel).parallel(blk);
    lanes.compute_at(blocks, blk).bound_extent(u, width).vectorize(u, k.lanes).unroll(u);
    // A steady state without the row-end guard in every copy of the loop, also inside the
    // tails of the partitioned loops around it (Halide otherwise leaves those guarded, and
    // the guarded copy keeps its accumulators in memory).
    lanes.update()
        .reorder(u, rxv, s.r.y, s.r.z)
        .vectorize(u, k.lanes)
        .unroll(u)
        .partition(rxv, Halide::Partition::Always);
}

// Per-channel sums in memory order, for short planes (the "split" strategy's statistics and
// gradient sums, runtime/src/strategy.cpp): one partial sum per position of the (flattened) row,
// vectorized along it, and the channels of the task's group inside the batch loop, so that a
// task reads its group's slab of each batch item front to back. The by-channel order above
// reads a channel's N rows a channel stride apart, and a 49-value row per jump leaves the
// hardware prefetchers idle (bench/results/strategies_*.md). The partial sums take
// W * channels * 2 values per task: short rows only (the runtime's split_max_plane).
inline void schedule_channel_sums_in_memory_order(ChannelSums &s, const LoopLevel &at,
                                                  const Knobs &k) {
    s.require_one_level("cpu memory-order sums");
    Var u("u"), c(s.sums.args()[0].name());
    const int lanes = s.sums.types()[0].bits() == 64 ? std::max(1, k.lanes / 2) : k.lanes;
    s.sums.compute_at(at);
    Func per_position = s.sums.update().rfactor(s.r.x, u);
    // The positions of a channel adjacent in memory (rfactor stores the channel innermost): a
    // vector of partial sums is one load, not a gather.
    per_position.reorder_storage(u, c).compute_at(at).vectorize(u, lanes,
                                                                TailStrategy::GuardWithIf);
    // Four batch rows per pass over the partial sums: each vector of them is loaded and stored
    // once per four rows (measured with JIT kernels on 32x2048x7x7: 1.4x faster than one row).
    RVar rzo("rzo"), rzi("rzi");
    per_position.update()
        .split(s.r.z, rzo, rzi, 4, TailStrategy::GuardWithIf)
        .reorder(rzi, u, c, s.r.y, rzo)
        .vectorize(u, lanes, TailStrategy::GuardWithIf)
        .unroll(rzi);
}

// Run-time switches (the fused epilogue's, the ReLU's mask in backward) as copies of a
// pointwise loop, one per combination a network calls, each simplified with its switches
// known: a plain call then neither loads z nor tests signs. Where the loop and not memory is
// the limit (cache-resident tensors, 7x7 planes) the general form costs 1.4-1.8x
// (bench/results/cpu_epilogue_*.md). The loop left after the cases serves every other
// combination. A switch that is a constant (a stage in a user's pipeline) needs no copy.
inline bool runtime_switch(const Expr &e) { return e.defined() && !Halide::Internal::is_const(e); }
inline std::vector<Expr> epilogue_cases(const Epilogue &ep) {
    const bool add = ep.residual.defined() && runtime_switch(ep.add_residual);
    const Expr &a = ep.add_residual, &r = ep.relu;
    if (add && runtime_switch(r)) return {!a && !r, !a && r, a && r};
    if (add) return {a};
    if (runtime_switch(r)) return {r};
    return {};
}
// `schedule` applied to each case's copy of `out`'s loop, then to the loop of the rest.
inline void for_each_case(Func out, const std::vector<Expr> &cases,
                          const std::function<void(Halide::Stage)> &schedule) {
    for (const Expr &c : cases) schedule(out.specialize(c));
    schedule(out);
}

// Channels per parallel task: enough for `grain` elements, at most C. Splits by it use
// ShiftInwards: the last group overlaps the one before instead of being guarded, so every
// group has the same bounds.
inline Expr channel_group(const ChannelSums &s, Expr C, const Knobs &k) {
    // In 64 bits: a channel holds 2^31 values or more in large_buffers kernels.
    Expr per_channel = Halide::cast<int64_t>(s.W) * s.H * s.N;
    Expr group = k.grain / Halide::max(per_channel, 1);
    return Halide::cast<int>(Halide::clamp(group, 1, Halide::cast<int64_t>(C)));
}

// A 4-D output that consumes per-channel sums: one parallel loop over channel groups; a task
// computes the sums of its group, then writes the group while it is still in L2, so the data
// crosses DRAM once. `side_outputs` are per-channel outputs (saved stats, parameter gradients)
// fused into the same loop with compute_with, so the sums are computed once for all outputs;
// `per_channel_funcs` are per-channel intermediates computed in that loop.
// Groups hold at least `grain` elements (2048 channels of 7x7x32 would otherwise be 2048
// tiny tasks). With fewer than `min_channels` channels (C = 3 on a 1080p image) the channels
// cannot keep the cores busy: the sums' blocks (of W, or of rows in two-level sums) and the
// output's rows run in parallel inside each channel (nested parallelism).
//
// Pipelining: a task runs `pipelined_groups` consecutive groups, and the output pass of each
// prefetches, line for line as it writes, the `prefetched` inputs of the next group. Without
// it a core alternates a read-only phase (the sums, from DRAM) with a write-only one (the
// output, from cache to DRAM with streaming stores), and one core cannot keep DRAM busy that
// way (bench/stream_floor.h, floor_via_scratch); with it the output pass reads the next group
// from DRAM while it writes, and the sums then read from cache.
// The groups of a task are a ShiftInwards split too: when the groups do not divide evenly, the
// last task repeats a few of the groups before it (the same values written again).
inline void schedule_per_channel(Func out, ChannelSums &s, const std::vector<Func> &side_outputs,
                                 const std::vector<Func> &per_channel_funcs,
                                 const std::vector<Halide::ImageParam> &prefetched, const Vars &v,
                                 const Knobs &k, const std::vector<Expr> &cases = {}) {
    Halide::OutputImageParam ob = out.output_buffer();
    Expr W = ob.dim(0).extent(), C = ob.dim(2).extent();
    Expr few_channels = C < k.min_channels;
    Expr channels_per_task = channel_group(s, C, k);
    // Rows that are not whole lines do not prefetch (below): their tasks stay one group each,
    // which also spares them the repeated groups of the ShiftInwards split.
    const bool pipelined = k.pipelined_groups > 1 && !prefetched.empty();
    const int per_line = std::max(1, 64 / ob.type().bytes());
    // The few-channel schedule's row chunks (below).
    Expr row_chunk = Halide::min(W, k.chunk);
    Expr whole_line_rows = W % per_line == 0 && row_chunk % per_line == 0;
    Expr groups = (C + channels_per_task - 1) / channels_per_task;
    Expr groups_per_task =
        pipelined ? Halide::select(whole_line_rows, Halide::min(groups, k.pipelined_groups), 1)
                  : Expr(1);
    Var co("co"), ci("ci"), task("task"), group("group"), wo("wo"), wi("wi"), row("row"),
        rows("rows"), line("line"), lane("lane");
    auto split_channels = [&](Func f) -> Func & {
        return f.split(v.c, co, ci, channels_per_task, TailStrategy::ShiftInwards)
            .split(co, task, group, groups_per_task, TailStrategy::ShiftInwards)
            .parallel(task);
    };
    // One prefetch per 64-byte line of the output, of the place `channels_per_task` channels
    // further on. Halide's prefetch() shifts a loop variable that appears in the addresses;
    // the channel reaches them only through the splits' lets, so the shift is taken along the
    // row: for a W-contiguous input, the element `channels_per_task * stride(c)` further along
    // w is that place (a strided input whose W stride is not 1 prefetches its current line
    // instead). Prefetches do not fault, so the last group's, past the end of the tensor, need
    // no guard. Only rows of whole lines prefetch (every row of a streaming-store call, and the
    // planes of the common shapes): RoundUp then splits them exactly, and every prefetch is
    // one line at a constant offset. A tail strategy that handles other rows moves the shifted
    // box (ShiftInwards clamps it back into the current row) or makes Halide compute the
    // extent of each shifted box (GuardWithIf: ~20 instructions per line).
    auto vectorize_and_prefetch = [&](Halide::Stage stage, const Var &w, Expr row) {
        if (pipelined) {
            Halide::Stage whole_lines = stage.specialize(row % per_line == 0);
            whole_lines.split(w, line, lane, per_line, TailStrategy::RoundUp)
                .vectorize(lane, std::min(k.lanes, per_line));
            for (const Halide::ImageParam &in : prefetched) {
                Expr ahead = Halide::select(in.dim(0).stride() == 1,
                                            channels_per_task * in.dim(2).stride() / per_line, 0);
                whole_lines.prefetch(in, line, line, ahead,
                                     Halide::PrefetchBoundStrategy::NonFaulting);
            }
        }
        stage.vectorize(w, k.lanes, TailStrategy::GuardWithIf);
    };
    out.reorder(v.w, v.h, v.n, v.c);
    split_channels(out);
    Halide::Stage few = out.specialize(few_channels);
    few.split(v.w, wo, wi, row_chunk, TailStrategy::ShiftInwards)
        .fuse(wo, v.h, row)
        .fuse(row, v.n, rows)
        .parallel(rows);
    vectorize_and_prefetch(few, wi, row_chunk);
    // A copy per switch case below the few-channel copy, which keeps the general form: with few
    // channels the loop runs inside channels, where memory, not the loop, limits.
    for_each_case(out, cases, [&](Halide::Stage stage) { vectorize_and_prefetch(stage, v.w, W); });
    schedule_channel_sums(s, LoopLevel(out, group), k, few_channels);
    for (Func f : per_channel_funcs) f.compute_at(out, group);
    for (Func f : side_outputs) split_channels(f).compute_with(out, group);
}

// Per-channel outputs only (parameter gradients without grad_input, partial statistics);
// `per_channel_funcs` are computed per channel group, before the sums.
// memory_order: the sums in memory order (schedule_channel_sums_in_memory_order).
inline void schedule_reduction_only(const std::vector<Func> &outs, ChannelSums &s, const Vars &v,
                                    const Knobs &k, const std::vector<Func> &per_channel_funcs,
                                    bool memory_order) {
    Func first = outs.front();
    Expr C = first.output_buffer().dim(0).extent();
    Expr channels_per_task = channel_group(s, C, k);
    Var co("co"), ci("ci");
    for (size_t i = 0; i < outs.size(); ++i) {
        Func f = outs[i];
        f.split(v.c, co, ci, channels_per_task, TailStrategy::ShiftInwards).parallel(co);
        if (i > 0) f.compute_with(first, co);
    }
    if (memory_order)
        schedule_channel_sums_in_memory_order(s, LoopLevel(first, co), k);
    else
        schedule_channel_sums(s, LoopLevel(first, co), k, C < k.min_channels);
    for (Func f : per_channel_funcs) f.compute_at(first, co);
}

// A pointwise 4-D output: W split into row chunks of at most `chunk` elements; all chunks of
// all rows form one loop, cut into parallel tasks of about `grain` elements.
// The chunk is min(W, chunk) with ShiftInwards (the last chunk of a row overlaps the one before
// it): a fixed chunk with GuardWithIf would leave an epilogue loop that runs to the chunk size
// on every short row (measured: eval 3.5x slower than training forward on 20x100x35x45).
// With at least `min_batch` batch items, each item is a task and the loops stay nested: the
// fused loop needs a division per row to recover (c, n), which costs more than a 7x7 row
// (measured: eval on 32x2048x7x7 2.7x the streaming bound with the fused loop).
inline void schedule_pointwise(Func out, Func per_channel, const Vars &v, const Knobs &k,
                               const std::vector<Expr> &cases = {}) {
    Halide::OutputImageParam ob = out.output_buffer();
    Expr row_len = Halide::min(ob.dim(0).extent(), k.chunk);
    Expr rows_per_task = Halide::max(1, k.grain / Halide::max(row_len, 1));
    Var wo("wo"), wi("wi"), row("row"), plane("plane"), rows("rows"), task("task"), ti("ti");
    for_each_case(out, cases, [&](Halide::Stage s) {
        s.split(v.w, wo, wi, row_len, TailStrategy::ShiftInwards)
            .vectorize(wi, k.lanes, TailStrategy::GuardWithIf);
        s.specialize(ob.dim(3).extent() >= k.min_batch).parallel(v.n);
        s.fuse(wo, v.h, row)
            .fuse(row, v.c, plane)
            .fuse(plane, v.n, rows)
            .split(rows, task, ti, rows_per_task, TailStrategy::GuardWithIf)
            .parallel(task);
    });
    if (per_channel.defined()) per_channel.compute_root();
}

// ---- NHWC ---------------------------------------------------------------------------------
// A dense channels_last tensor arrives as rows of C values: (w = N*H*W rows, h = 1, c, n = 1);
// a padded one as (w, h, c, n) with C innermost. Loops run over rows, vectors over channels.

inline Expr nhwc_block_rows(Expr C, const Knobs &k) {
    if (k.block_rows > 0) return Expr(k.block_rows);
    return Halide::max(1, k.grain / Halide::max(C, 1));
}

// Per-channel sums: blocks of rows (and batch items) in parallel, each summing into its own
// vector of C partial sums, swept row by row with C innermost; then one vectorized pass over
// the blocks. Partial sums are in the accumulator type, like the NCHW rfactor's lanes.
inline void schedule_channel_sums_nhwc(ChannelSums &s, Expr C, const Knobs &k,
                                       Expr specialize_on = Expr()) {
    s.require_one_level("cpu NHWC sums");
    Var c(s.sums.args()[0].name()), blk("blk"), nn("nn"), task("task"), co("co"), ci("ci"),
        cv("cv"), cl("cl");
    RVar rxo("rxo"), rxi("rxi");
    Func partial = s.sums.update()
                       .split(s.r.x, rxo, rxi, nhwc_block_rows(C, k), TailStrategy::GuardWithIf)
                       .rfactor({{rxo, blk}, {s.r.z, nn}});
    // Each block's C partial sums start on their own cache lines: blocks run on different
    // cores, and a line shared by two blocks (C = 100 doubles is 12.5 lines) ping-pongs between
    // them on every row (measured: 20x100x35x45 1.7x slower on 2 threads than on 1, and
    // 1x3x1080x1920, 3 channels per block, 280x the floor).
    partial.compute_root().align_storage(c, 16).vectorize(c, k.lanes, TailStrategy::GuardWithIf);
    // Channels in tiles of `accumulators` vectors, rows inside a tile: a tile's partial sums
    // stay in registers across the block's rows (its addresses do not change in the row loop),
    // instead of a load and a store of them per row.
    const int tile = k.lanes * k.accumulators;
    partial.update()
        .split(c, co, ci, tile, TailStrategy::GuardWithIf)
        .split(ci, cv, cl, k.lanes, TailStrategy::GuardWithIf)
        .reorder(cl, cv, rxi, s.r.y, co, blk, nn)
        .vectorize(cl)
        .unroll(cv)
        .fuse(blk, nn, task)
        .parallel(task);
    // A run-time switch of the summed values (the ReLU's mask): one copy of the loop with it
    // on, one with it off, where the simplifier drops what the switch leaves unused.
    if (specialize_on.defined()) partial.update().specialize(specialize_on);
    s.sums.compute_root().vectorize(c, k.lanes, TailStrategy::GuardWithIf);
    s.sums.update().vectorize(c, k.lanes, TailStrategy::GuardWithIf);
}

// A pointwise NHWC output: channels innermost and vectorized, all rows in one loop cut into
// parallel tasks of about `grain` elements.
inline void schedule_pointwise_nhwc(Func out, const Vars &v, const Knobs &k,
                                    const std::vector<Expr> &cases = {}) {
    Expr C = out.output_buffer().dim(2).extent();
    Expr rows_per_task = Halide::max(1, k.grain / Halide::max(C, 1));
    Var wh("wh"), rows("rows"), task("task"), ti("ti");
    for_each_case(out, cases, [&](Halide::Stage s) {
        s.reorder(v.c, v.w, v.h, v.n)
            .vectorize(v.c, k.lanes, TailStrategy::GuardWithIf)
            .fuse(v.w, v.h, wh)
            .fuse(wh, v.n, rows)
            .split(rows, task, ti, rows_per_task, TailStrategy::GuardWithIf)
            .parallel(task);
    });
}

inline void compute_per_channel(const std::vector<Func> &funcs, const Vars &v, const Knobs &k) {
    for (Func f : funcs) {
        if (f.defined()) f.compute_root().vectorize(v.c, k.lanes, TailStrategy::GuardWithIf);
    }
}

// `prefetched`: the tensor inputs the per-channel NCHW schedule prefetches a group ahead.
inline void schedule_train_forward(TrainForward &p, const std::string &kernel, Layout layout,
                                   const Vars &v, const ScheduleParams &sp, const Target &t,
                                   const std::vector<Halide::ImageParam> &prefetched = {}) {
    Knobs k = knobs(sp, kernel, t);
    if (layout == Layout::nhwc) {
        schedule_channel_sums_nhwc(p.stats.s, p.y.output_buffer().dim(2).extent(), k);
        compute_per_channel({p.mean, p.scale}, v, k);
        compute_per_channel({p.saved_mean, p.saved_invstd, p.running_mean_out, p.running_var_out},
                            v, k);
        schedule_pointwise_nhwc(p.y, v, k, epilogue_cases(p.epilogue));
        return;
    }
    // The shift once per channel (inlined it was recomputed for every vector of the sums).
    schedule_per_channel(p.y, p.stats.s,
                         {p.saved_mean, p.saved_invstd, p.running_mean_out, p.running_var_out},
                         {p.stats.shift, p.mean, p.scale}, prefetched, v, k);
}

inline void schedule_eval_forward(EvalForward &p, const std::string &kernel, Layout layout,
                                  const Vars &v, const ScheduleParams &sp, const Target &t) {
    Knobs k = knobs(sp, kernel, t);
    if (layout == Layout::nhwc) {
        compute_per_channel({p.scale}, v, k);
        schedule_pointwise_nhwc(p.y, v, k, epilogue_cases(p.epilogue));
        return;
    }
    schedule_pointwise(p.y, p.scale, v, k, epilogue_cases(p.epilogue));
}

inline void schedule_backward(Backward &p, const std::string &kernel, Layout layout, const Vars &v,
                              const ScheduleParams &sp, const Target &t,
                              const std::vector<Halide::ImageParam> &prefetched = {},
                              bool memory_order = false) {
    Knobs k = knobs(sp, kernel, t);
    if (!p.training) p.invstd.compute_root();  // sqrt once per channel, not per element
    std::vector<Func> params;
    if (p.grad_weight.defined()) params = {p.grad_weight, p.grad_bias};
    // Training backward must not pay for a ReLU it does not have: its loops over the tensor are
    // specialized on the switch, and the copy without it never loads the mask (measured
    // unspecialized: 3-11% slower with the ReLU off). A specialization doubles the kernel's code
    // and its build time, so only where it pays: training backward (eval backward, rarer, keeps
    // one loop) on AVX2 and up without large_buffers (the ISAs of current CPUs and the 32-bit
    // indexing nearly every call uses). Elsewhere the loop loads the mask argument, which is
    // grad_out's own cache lines when the ReLU is off.
    const bool specialize =
        p.training && t.natural_vector_size<float>() >= 8 && !t.has_feature(Target::LargeBuffers);
    const Expr relu = specialize ? p.relu : Expr();
    const std::vector<Expr> relu_cases =
        relu.defined() ? std::vector<Expr>{relu} : std::vector<Expr>{};
    if (p.local_sums.defined()) {
        p.local_sums.bound(p.field, 0, 2).reorder(p.field, v.c).unroll(p.field);
        params.push_back(p.local_sums);
    }
    const bool reduce = p.sums.sums.defined() && !p.synchronized;  // the sums are computed here
    if (layout == Layout::nhwc) {
        if (reduce) {
            Expr C = (p.grad_input.defined() ? p.grad_input : params.front())
                         .output_buffer()
                         .dim(p.grad_input.defined() ? 2 : 0)
                         .extent();
            schedule_channel_sums_nhwc(p.sums, C, k, relu);
        }
        compute_per_channel({p.coefficients}, v, k);
        compute_per_channel(params, v, k);
        if (p.grad_input.defined()) schedule_pointwise_nhwc(p.grad_input, v, k, relu_cases);
        return;
    }
    // NCHW computes the sums inside grad_input's loop (or the first parameter gradient's), so
    // specializing that loop covers them, except in the few-channel specialization, which is
    // taken first and so keeps the load (from grad_out's lines).
    if (p.grad_input.defined() && reduce) {
        schedule_per_channel(p.grad_input, p.sums, params, {p.coefficients}, prefetched, v, k,
                             relu_cases);
    } else if (p.grad_input.defined()) {
        schedule_pointwise(p.grad_input, p.coefficients, v, k, relu_cases);
    } else {
        schedule_reduction_only(params, p.sums, v, k, {}, memory_order);
        if (relu.defined()) params.front().specialize(relu);
    }
}

// SyncBatchNorm2d: a process's partial statistics, the reduction of training forward without
// its output (the per-channel outputs only, as parameter gradients without grad_input).
inline void schedule_partial_stats(PartialStats &p, const std::string &kernel, Layout layout,
                                   const Vars &v, const ScheduleParams &sp, const Target &t,
                                   bool memory_order = false) {
    Knobs k = knobs(sp, kernel, t);
    p.partial.bound(p.field, 0, 3).reorder(p.field, v.c).unroll(p.field);
    if (layout == Layout::nhwc) {
        schedule_channel_sums_nhwc(p.stats.s, p.partial.output_buffer().dim(0).extent(), k);
        compute_per_channel({p.partial}, v, k);
        return;
    }
    schedule_reduction_only({p.partial}, p.stats.s, v, k, {p.stats.shift}, memory_order);
}

// The merge over processes: channels in vectors, processes in order (a serial loop each).
inline void schedule_sync_statistics(SyncStatistics &p, const std::string &kernel, const Vars &v,
                                     const ScheduleParams &sp, const Target &t) {
    Knobs k = knobs(sp, kernel, t);
    Func merged = p.merged.merged;
    merged.compute_root().vectorize(v.c, k.lanes, TailStrategy::GuardWithIf);
    merged.update().vectorize(v.c, k.lanes, TailStrategy::GuardWithIf);
    compute_per_channel(
        {p.o.mean, p.var, p.o.saved_invstd, p.o.running_mean_out, p.o.running_var_out}, v, k);
}

}  // namespace bn2d::cpu
