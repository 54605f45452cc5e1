# The kernel variant table: the one list of what is built and dispatched.
#
# cmake/Bn2dKernels.cmake reads it to add one Halide library per kernel and target
# (bn2d_<kernel>_<dtype>_<layout>_<backend>[_<isa>], e.g. bn2d_train_fwd_f32_nchw_cpu_avx2) and
# to generate what the other layers name from it:
#   bn2d_vocabulary.h     dtypes, layouts (enum), schedule kernels, every kernel's generator and
#                         parameters: for the generators, the schedules' machine-file checks,
#                         the tuner and the runtime (which checks its DType order against it)
#   bn2d_kernel_table.h   the runtime's dispatch table: one KernelSet per CPU ISA and GPU backend
#   bn2d_kernel_args.h    one struct of named arguments per kernel (from the generated
#                         functions' signatures: cmake/Bn2dKernelArgs.cmake)
#   bn2d/cpu_isa.h        public: enum class CpuIsa
# Tests, benchmarks and BN2D_VERBOSE name kernels and ISAs from what it generates. Adding a
# variant or a target is one line here; a dtype or layout is its name here plus the code that
# truly differs (its element type in the generator, its stride rule, the runtime's enum).

# ---- the vocabulary ------------------------------------------------------------------------
# dtypes and layouts, in the order of the runtime's enums (bn2d::DType, checked at compile time;
# the Layout enum is generated from this list).
set(BN2D_DTYPES f32 bf16 f16 f64)
set(BN2D_LAYOUTS nchw nhwc strided)
# The ops whose schedules have knobs of their own, and the layouts whose schedules are their own:
# a machine file's kernel is <op> for the first layout (and every layout not listed: strided
# runs the NCHW schedule) and <op>_<layout> for the others (train_fwd_nhwc). Every other kernel
# of the table takes its schedule op's knobs (*_bwd_* kernels: train_bwd's or eval_bwd's).
set(BN2D_SCHEDULE_OPS train_fwd eval_fwd train_bwd eval_bwd)
set(BN2D_SCHEDULE_LAYOUTS nchw nhwc)
#
# Options that cost nothing at run time are not variants: a non-affine module passes weight 1
# and bias 0; training backward without parameter gradients runs train_bwd (the sums are needed
# for grad_input anyway) and drops the 2*C values; the fused epilogue relu(bn(x) + z) and the
# ReLU's mask in backward are run-time switches of every kernel (bn2d::Epilogue), and the
# residual's gradient is eval_bwd_input with a unit scale (runtime/src/dispatch.cpp). Separate
# libraries only where the work differs: which outputs exist, training or eval statistics, and
# the target.

# bn2d_kernel(<kernel> DTYPES <dtype>... LAYOUTS <layout>... GENERATOR <generator>
#             [PARAMS <key=value>...] [STREAMING <output>] [CPU_ONLY])
#   One library per dtype x layout x backend.
#   <kernel>: the op and its outputs. Kernels named *_bwd* share the schedule knobs of
#   train_bwd or eval_bwd in schedules/machines/*.params (NHWC: train_bwd_nhwc, ...).
#   dtypes: f32, bf16, f16, f64 (element type of x, y, dy, dx; per-channel values are float32,
#   float64 for f64). Layouts: nchw (W stride 1), nhwc (channels_last: C stride 1), strided
#   (any strides; the runtime's path for every other view and for mixed layouts). The runtime
#   falls back to strided when a layout is not listed, and names a missing dtype in its error.
#   STREAMING <output>: also a CPU library whose vector stores to that tensor output are
#   non-temporal (streaming stores: no read for ownership of each output line), for the
#   BN2D_STREAMING_DTYPES, _LAYOUTS and _ISAS below: bn2d_<kernel>_<dtype>_<layout>_cpu_nt (other
#   ISAs and dtypes keep ordinary stores; each build is a generator run per ISA). The runtime
#   runs it when the call's tensors do not fit the last-level cache and the output's lines are
#   aligned (bn2d::set_streaming_stores); in cache, ordinary stores are faster.
set(all_dtypes ${BN2D_DTYPES})
set(all_layouts ${BN2D_LAYOUTS})
set(BN2D_STREAMING_DTYPES f32 bf16)
set(BN2D_STREAMING_LAYOUTS nchw nhwc)
set(BN2D_STREAMING_ISAS avx512 avx2)
bn2d_kernel(train_fwd        DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_train_forward STREAMING y)
bn2d_kernel(eval_fwd         DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_eval_forward STREAMING y)
bn2d_kernel(train_bwd        DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_backward PARAMS mode=train STREAMING grad_input)
bn2d_kernel(train_bwd_params DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_backward PARAMS mode=train with_grad_input=false with_sums=true)
bn2d_kernel(eval_bwd         DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_backward PARAMS mode=eval STREAMING grad_input)
bn2d_kernel(eval_bwd_input   DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_backward PARAMS mode=eval with_grad_params=false STREAMING grad_input)
bn2d_kernel(eval_bwd_params  DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_backward PARAMS mode=eval with_grad_input=false)

# SyncBatchNorm2d (runtime/src/sync.cpp): training split where processes communicate. Its
# backward's first half is train_bwd_params, which also writes the local sums (float64).
#   sync_stats      a process's {count, mean, M2} per channel (training forward's knobs)
#   sync_merge      per channel: merge over processes, saved and running statistics; one library
#                   per per-channel type (f32 also serves bf16 and f16), no tensor, no layout
#   sync_bwd_input  grad_input from all processes' gradient sums (training backward's knobs)
# The normalization itself is eval_fwd with the merged statistics.
bn2d_kernel(sync_stats       DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_partial_stats)
bn2d_kernel(sync_merge       DTYPES f32 f64 LAYOUTS nchw GENERATOR bn2d_sync_statistics)
bn2d_kernel(sync_bwd_input   DTYPES ${all_dtypes} LAYOUTS ${all_layouts} GENERATOR bn2d_backward PARAMS mode=train with_grad_params=false global_sums=true STREAMING grad_input)

# The split strategy (runtime/src/dispatch.cpp, bn2d::set_cpu_strategy): a training forward
# or backward of short NCHW planes in two passes that both read in memory order, the sums first,
# then a pointwise kernel (eval_fwd with the merged statistics, sync_bwd_input with this call's
# own sums), as SyncBatchNorm2d runs every call. CPU_ONLY: no GPU and no large_buffers builds
# (the runtime splits 32-bit-indexed CPU calls only).
#   split_stats     {count, mean, M2} per channel, then sync_merge (one process) and eval_fwd
#   split_bwd_sums  train_bwd_params's outputs (parameter gradients, the sums), then sync_bwd_input
bn2d_kernel(split_stats      DTYPES ${all_dtypes} LAYOUTS nchw GENERATOR bn2d_partial_stats PARAMS sums_order=memory CPU_ONLY)
bn2d_kernel(split_bwd_sums   DTYPES ${all_dtypes} LAYOUTS nchw GENERATOR bn2d_backward PARAMS mode=train with_grad_input=false with_sums=true sums_order=memory CPU_ONLY)

# bn2d_threshold(<op> <knob>)
#   A run-time strategy threshold: the machine file sets it as runtime.<op>.<knob> = <integer>
#   (0 when it does not), the generators accept the key, and the runtime reads it from the
#   generated table (detail::threshold(op, knob)). Kernels do not depend on it: tuning it
#   (scripts/tune_strategy.sh) rebuilds the runtime only.
#   split_max_plane      the largest H*W whose training calls run the split strategy
#   split_max_plane_add  the same for a training forward that adds a residual (forward_add):
#                        the fused kernel's epilogue is one general loop, the split strategy's
#                        pointwise pass has a copy per case (backward's fused kernel reads the
#                        residual's gradient like any other, so it needs no threshold of its own)
#   split_max_cache_percent  also split a call whose tensors fit this percent of the last-level
#                        cache (the bytes the streaming-store rule counts): the pointwise pass
#                        then reads x from the cache, not from DRAM
bn2d_threshold(train_fwd split_max_plane)
bn2d_threshold(train_fwd split_max_plane_add)
bn2d_threshold(train_fwd split_max_cache_percent)
bn2d_threshold(train_bwd split_max_plane)
bn2d_threshold(train_bwd split_max_cache_percent)

# bn2d_target(<backend> <name> <Halide target>)
#   cpu: one multitarget library per kernel, ISAs best first; the last must run on any x86-64
#   CPU. The runtime picks the best the CPU supports (Halide's feature check on the target's
#   features), capped by set_max_cpu_isa() / BN2D_MAX_CPU_ISA=<name>.
#   cuda, opencl: one target each (built when BN2D_GPU is on; no GPU is needed to build).
#   LARGE_BUFFERS (cpu): also build every kernel for this ISA with Halide's large_buffers
#   feature (64-bit indexing), into bn2d_<kernel>_cpu_large. The runtime runs those only for
#   tensors the 32-bit kernels cannot index (2^31 elements or more, or an element span or an
#   extent x stride that large), with the best such ISA at or below the selected one; every
#   other call keeps the cheaper 32-bit address arithmetic. The last cpu target must have them.
bn2d_target(cpu    avx512   x86-64-linux-avx512_skylake)
bn2d_target(cpu    avx2     x86-64-linux-avx2-fma-f16c LARGE_BUFFERS)
bn2d_target(cpu    sse41    x86-64-linux-sse41)
bn2d_target(cpu    baseline x86-64-linux LARGE_BUFFERS)
bn2d_target(cuda   sm80     x86-64-linux-cuda-cuda_capability_80)
# float64 sums and tensors need cl_khr_fp64 on the device; float16 kernels are built with
# cl_half added (cmake/Bn2dKernels.cmake) and need cl_khr_fp16.
bn2d_target(opencl cl12     x86-64-linux-opencl-cl_doubles)
