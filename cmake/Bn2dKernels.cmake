# Builds the kernel libraries from the variant table (generators/variants.cmake) and generates
# what the runtime needs to dispatch them, so the table is the only list of variants:
#   bn2d_kernel_table.h          private: kernel headers, one KernelSet per CPU ISA and GPU
#                                backend, ISA features, build facts (machine file, Halide version)
#   include/bn2d/cpu_isa.h       public: enum class CpuIsa, one enumerator per CPU target
#   bn2d_kernels.txt             every kernel as "<key> <generator> <params...>" (for tests that
#                                run the generator as the build does)
#
# Inputs: BN2D_SCHEDULE_FILE, BN2D_GPU, BN2D_GPU_BACKENDS, Halide_VERSION. Outputs: BN2D_ALL_KERNELS (library
# targets), BN2D_GENERATED_INCLUDE_DIR, BN2D_CPU_TARGETS, BN2D_CUDA_TARGET, BN2D_OPENCL_TARGET,
# BN2D_GPU_BUILT (the GPU backends whose kernels are built), BN2D_KERNELS_FILE.

set(BN2D_KERNELS "")
set(BN2D_CPU_ISAS "")            # built (BN2D_ONLY_CPU_ISAS may leave some of the table out)
set(BN2D_TABLE_CPU_ISAS "")      # all of the table
set(BN2D_CPU_TARGETS "")
set(BN2D_CPU_LARGE_ISAS "")     # the ISAs also built with 64-bit indexing (LARGE_BUFFERS)
set(BN2D_CPU_LARGE_TARGETS "")
set(BN2D_CUDA_TARGET "")
set(BN2D_OPENCL_TARGET "")

set(BN2D_OPS "")
set(BN2D_STREAMING_KERNELS "")   # keys with a streaming-store build (STREAMING in the table)
set(BN2D_STREAMING_ISAS "")

set(BN2D_THRESHOLDS "")       # <op>.<knob> of every bn2d_threshold
function(bn2d_threshold op knob)
    if (NOT op IN_LIST BN2D_OPS)
        message(FATAL_ERROR "variants.cmake: bn2d_threshold(${op} ${knob}): no kernel ${op} above it")
    endif ()
    set(BN2D_THRESHOLDS ${BN2D_THRESHOLDS} "${op}.${knob}" PARENT_SCOPE)
endfunction()

function(bn2d_kernel kernel)
    cmake_parse_arguments(PARSE_ARGV 1 ARG "CPU_ONLY" "GENERATOR;STREAMING" "DTYPES;LAYOUTS;PARAMS")
    if (NOT ARG_GENERATOR OR NOT ARG_DTYPES OR NOT ARG_LAYOUTS)
        message(FATAL_ERROR "variants.cmake: bn2d_kernel(${kernel} ...) needs DTYPES, LAYOUTS and GENERATOR")
    endif ()
    if (kernel IN_LIST BN2D_OPS)
        message(FATAL_ERROR "variants.cmake: kernel ${kernel} is listed twice")
    endif ()
    set(keys ${BN2D_KERNELS})
    set(streaming_keys ${BN2D_STREAMING_KERNELS})
    foreach (dtype IN LISTS ARG_DTYPES)
        if (NOT dtype IN_LIST BN2D_DTYPES)
            message(FATAL_ERROR "variants.cmake: ${kernel}: unknown dtype '${dtype}' (${BN2D_DTYPES})")
        endif ()
        if (BN2D_ONLY_DTYPES AND NOT dtype IN_LIST BN2D_ONLY_DTYPES)
            continue ()
        endif ()
        foreach (layout IN LISTS ARG_LAYOUTS)
            if (NOT layout IN_LIST BN2D_LAYOUTS)
                message(FATAL_ERROR "variants.cmake: ${kernel}: unknown layout '${layout}' (${BN2D_LAYOUTS})")
            endif ()
            set(key "${kernel}_${dtype}_${layout}")
            list(APPEND keys ${key})
            set(BN2D_KERNEL_${key}_OP ${kernel} PARENT_SCOPE)
            set(BN2D_KERNEL_${key}_GENERATOR ${ARG_GENERATOR} PARENT_SCOPE)
            set(BN2D_KERNEL_${key}_DTYPE ${dtype} PARENT_SCOPE)
            set(BN2D_KERNEL_${key}_PARAMS ${ARG_PARAMS} dtype=${dtype} layout=${layout} PARENT_SCOPE)
            set(BN2D_KERNEL_${key}_CPU_ONLY ${ARG_CPU_ONLY} PARENT_SCOPE)
            if (ARG_STREAMING AND dtype IN_LIST BN2D_STREAMING_DTYPES
                AND layout IN_LIST BN2D_STREAMING_LAYOUTS)
                list(APPEND streaming_keys ${key})
                set(BN2D_KERNEL_${key}_STREAMING ${ARG_STREAMING} PARENT_SCOPE)
            endif ()
        endforeach ()
    endforeach ()
    set(BN2D_KERNELS ${keys} PARENT_SCOPE)
    set(BN2D_STREAMING_KERNELS ${streaming_keys} PARENT_SCOPE)
    set(BN2D_OPS ${BN2D_OPS} ${kernel} PARENT_SCOPE)
    set(BN2D_OP_${kernel}_DTYPES ${ARG_DTYPES} PARENT_SCOPE)
    set(BN2D_OP_${kernel}_LAYOUTS ${ARG_LAYOUTS} PARENT_SCOPE)
    set(BN2D_OP_${kernel}_GENERATOR ${ARG_GENERATOR} PARENT_SCOPE)
    set(BN2D_OP_${kernel}_PARAMS ${ARG_PARAMS} PARENT_SCOPE)
    set(BN2D_OP_${kernel}_CPU_ONLY ${ARG_CPU_ONLY} PARENT_SCOPE)
endfunction()

# CPU features a target asks for: the tokens after arch-bits-os (x86-64-linux-avx2-fma-f16c:
# avx2, fma, f16c), the same check Halide's multitarget wrapper makes.
function(bn2d_target_features target out)
    string(REPLACE "-" ";" tokens "${target}")
    list(LENGTH tokens n)
    set(features "")
    if (n GREATER 3)
        list(SUBLIST tokens 3 -1 features)
    endif ()
    set(${out} ${features} PARENT_SCOPE)
endfunction()

# BN2D_ONLY_CPU_ISAS=host: the first cpu target of the table whose features this CPU has
# (BN2D_HOST_TARGET), and the one without ISA features, which runs on any CPU of its arch.
function(bn2d_host_keeps target out)
    bn2d_target_features("${target}" features)
    bn2d_target_features("${BN2D_HOST_TARGET}" host_features)
    set(runs_here TRUE)
    foreach (feature IN LISTS features)
        if (NOT feature IN_LIST host_features)
            set(runs_here FALSE)
        endif ()
    endforeach ()
    set(keep FALSE)
    if (NOT features OR (runs_here AND NOT BN2D_HOST_ISA))
        set(keep TRUE)
    endif ()
    set(${out} ${keep} PARENT_SCOPE)
endfunction()

function(bn2d_target backend name target)
    cmake_parse_arguments(PARSE_ARGV 3 ARG "LARGE_BUFFERS" "" "")
    if (backend STREQUAL "cpu")
        set(BN2D_TABLE_CPU_ISAS ${BN2D_TABLE_CPU_ISAS} ${name} PARENT_SCOPE)
        if (BN2D_ONLY_CPU_ISAS STREQUAL "host")
            if (NOT BN2D_HOST_TARGET)
                message(FATAL_ERROR "BN2D_ONLY_CPU_ISAS=host: Halide's Python module cannot tell "
                                    "this CPU's target (${BN2D_PYTHON})")
            endif ()
            bn2d_host_keeps("${target}" keep)
            if (NOT keep)
                return ()
            endif ()
            if (NOT BN2D_HOST_ISA)
                set(BN2D_HOST_ISA ${name} PARENT_SCOPE)
            endif ()
        elseif (BN2D_ONLY_CPU_ISAS AND NOT name IN_LIST BN2D_ONLY_CPU_ISAS)
            return ()
        endif ()
    endif ()
    # user_context: every kernel takes the runtime's per-call context first (detail::HalideCall:
    # its error message, its CUDA stream), which Halide passes on to the error handler and hooks.
    foreach (feature IN LISTS BN2D_HALIDE_FEATURES ITEMS user_context)
        string(APPEND target "-${feature}")
    endforeach ()
    if (ARG_LARGE_BUFFERS AND NOT backend STREQUAL "cpu")
        message(FATAL_ERROR "variants.cmake: LARGE_BUFFERS is for cpu targets (${name})")
    endif ()
    if (backend STREQUAL "cpu")
        if (name IN_LIST BN2D_CPU_ISAS)
            message(FATAL_ERROR "variants.cmake: CPU ISA ${name} is listed twice")
        endif ()
        set(BN2D_CPU_ISAS ${BN2D_CPU_ISAS} ${name} PARENT_SCOPE)
        set(BN2D_CPU_TARGETS ${BN2D_CPU_TARGETS} ${target} PARENT_SCOPE)
        if (ARG_LARGE_BUFFERS)
            set(BN2D_CPU_LARGE_ISAS ${BN2D_CPU_LARGE_ISAS} ${name} PARENT_SCOPE)
            set(BN2D_CPU_LARGE_TARGETS ${BN2D_CPU_LARGE_TARGETS} ${target}-large_buffers PARENT_SCOPE)
        endif ()
    elseif (backend STREQUAL "cuda" OR backend STREQUAL "opencl")
        string(TOUPPER "${backend}" up)
        if (BN2D_${up}_TARGET)
            message(FATAL_ERROR "variants.cmake: one ${backend} target only")
        endif ()
        set(BN2D_${up}_TARGET ${target} PARENT_SCOPE)
    else ()
        message(FATAL_ERROR "variants.cmake: unknown backend '${backend}' (cpu, cuda, opencl)")
    endif ()
endfunction()

include(${CMAKE_CURRENT_SOURCE_DIR}/generators/variants.cmake)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${CMAKE_CURRENT_SOURCE_DIR}/generators/variants.cmake)
if (NOT BN2D_KERNELS OR NOT BN2D_CPU_ISAS)
    message(FATAL_ERROR "variants.cmake: needs at least one kernel and one cpu target "
                        "(BN2D_ONLY_CPU_ISAS='${BN2D_ONLY_CPU_ISAS}', BN2D_ONLY_DTYPES='${BN2D_ONLY_DTYPES}')")
endif ()
set(bn2d_only_isas ${BN2D_ONLY_CPU_ISAS})
list(REMOVE_ITEM bn2d_only_isas host)
foreach (isa IN LISTS bn2d_only_isas)
    if (NOT isa IN_LIST BN2D_TABLE_CPU_ISAS)
        message(FATAL_ERROR "BN2D_ONLY_CPU_ISAS: '${isa}' is not a cpu target of generators/variants.cmake "
                            "(${BN2D_TABLE_CPU_ISAS})")
    endif ()
endforeach ()
foreach (backend IN LISTS BN2D_GPU_BACKENDS)
    if (NOT backend MATCHES "^(cuda|opencl)$")
        message(FATAL_ERROR "BN2D_GPU_BACKENDS: '${backend}' is not a GPU backend (cuda, opencl)")
    endif ()
endforeach ()
if (BN2D_GPU AND NOT BN2D_GPU_BACKENDS)
    message(FATAL_ERROR "BN2D_GPU_BACKENDS is empty: set BN2D_GPU=OFF to build no GPU kernels")
endif ()
set(BN2D_GPU_BUILT "")
if (BN2D_GPU)
    set(BN2D_GPU_BUILT ${BN2D_GPU_BACKENDS})
endif ()
list(GET BN2D_TABLE_CPU_ISAS -1 anywhere_isa)
if (NOT anywhere_isa IN_LIST BN2D_CPU_ISAS)
    message(FATAL_ERROR "BN2D_ONLY_CPU_ISAS must include ${anywhere_isa}, the ISA that runs on any x86-64 CPU")
endif ()
list(GET BN2D_CPU_ISAS -1 last_isa)
if (BN2D_CPU_LARGE_ISAS AND NOT last_isa IN_LIST BN2D_CPU_LARGE_ISAS)
    message(FATAL_ERROR "variants.cmake: with LARGE_BUFFERS targets, the last cpu target (${last_isa}, "
                        "the one that runs anywhere) must be one of them")
endif ()


# What the kernels depend on: the machine file without its runtime.* lines (the runtime's
# thresholds, read into the table below), so that tuning a threshold rebuilds the runtime, not
# every kernel. The generators still read the machine file itself (its errors name its lines);
# the copy is rewritten only when the rest changes, with the machine file's time stamp.
file(READ "${BN2D_SCHEDULE_FILE}" bn2d_schedule_text)
string(REGEX REPLACE "(^|\n)[ \t]*runtime\\.[^\n]*" "\\1" bn2d_kernel_schedule_text
       "${bn2d_schedule_text}")
set(BN2D_KERNEL_SCHEDULE_DEPENDENCY "${CMAKE_CURRENT_BINARY_DIR}/schedule_kernel_keys.params")
set(bn2d_previous_text "")
if (EXISTS "${BN2D_KERNEL_SCHEDULE_DEPENDENCY}")
    file(READ "${BN2D_KERNEL_SCHEDULE_DEPENDENCY}" bn2d_previous_text)
endif ()
if (NOT bn2d_previous_text STREQUAL bn2d_kernel_schedule_text)
    file(WRITE "${BN2D_KERNEL_SCHEDULE_DEPENDENCY}" "${bn2d_kernel_schedule_text}")
    execute_process(COMMAND touch -r "${BN2D_SCHEDULE_FILE}" "${BN2D_KERNEL_SCHEDULE_DEPENDENCY}")
endif ()

# ---- libraries --------------------------------------------------------------------------------
# One single-target library per kernel and target: bn2d_<key>_<backend> on a GPU, and per CPU
# ISA bn2d_<key>_cpu_<isa> (and bn2d_<key>_cpu_large_<isa> with 64-bit indexing), each its own
# C function, which the runtime's table calls directly after its own feature check (no
# multitarget wrapper: it decides once per process, and cannot honour set_max_cpu_isa()).
set(BN2D_ALL_KERNELS "")
set(BN2D_SIGNATURES "")  # <op>=<function_info header> of one library per op
set(BN2D_SIGNED_OPS "")  # the ops of BN2D_SIGNATURES
list(GET BN2D_CPU_ISAS -1 signature_isa)  # every build has it: the signatures come from it
# bn2d_library(<name> <key> <target>)
function(bn2d_library name key target)
    set(stmt "")
    if (BN2D_EMIT_STMT)
        set(stmt STMT "${name}_stmt" ASSEMBLY "${name}_asm")
    endif ()
    # Every variant of an op has one C signature (the dispatch table's type checks it); the
    # first built of the op, on the ISA every build has, describes it for bn2d_kernel_args.h.
    set(op ${BN2D_KERNEL_${key}_OP})
    set(info "")
    if (name STREQUAL "bn2d_${key}_cpu_${signature_isa}" AND NOT op IN_LIST BN2D_SIGNED_OPS)
        set(info FUNCTION_INFO_HEADER info_header)
        set(BN2D_SIGNED_OPS ${BN2D_SIGNED_OPS} ${op} PARENT_SCOPE)
    endif ()
    add_halide_library(
        ${name} FROM bn2d_generators
        GENERATOR ${BN2D_KERNEL_${key}_GENERATOR}
        FUNCTION_NAME ${name}
        USE_RUNTIME bn2d_halide_support
        TARGETS ${target}
        PARAMS ${BN2D_KERNEL_${key}_PARAMS} "schedule_file=${BN2D_SCHEDULE_FILE}"
        DEPENDS "${BN2D_KERNEL_SCHEDULE_DEPENDENCY}"  # tuned values changed: regenerate
        ${stmt} ${info})
    set(BN2D_ALL_KERNELS ${BN2D_ALL_KERNELS} ${name} PARENT_SCOPE)
    if (info)
        set(BN2D_SIGNATURES ${BN2D_SIGNATURES} "${op}=${info_header}" PARENT_SCOPE)
    endif ()
endfunction()
foreach (key IN LISTS BN2D_KERNELS)
    foreach (isa target IN ZIP_LISTS BN2D_CPU_ISAS BN2D_CPU_TARGETS)
        bn2d_library(bn2d_${key}_cpu_${isa} ${key} ${target})
    endforeach ()
    if (BN2D_KERNEL_${key}_CPU_ONLY)
        continue ()
    endif ()
    foreach (isa target IN ZIP_LISTS BN2D_CPU_LARGE_ISAS BN2D_CPU_LARGE_TARGETS)
        bn2d_library(bn2d_${key}_cpu_large_${isa} ${key} ${target})
    endforeach ()
    if ("cuda" IN_LIST BN2D_GPU_BUILT)
        bn2d_library(bn2d_${key}_cuda ${key} ${BN2D_CUDA_TARGET})
    endif ()
    if ("opencl" IN_LIST BN2D_GPU_BUILT)
        set(target ${BN2D_OPENCL_TARGET})
        if (BN2D_KERNEL_${key}_DTYPE STREQUAL "f16")
            # Only float16 kernels declare `half`: with cl_half every kernel's source does, and
            # a device without cl_khr_fp16 (PoCL on the CPU) would reject them all.
            set(target "${target}-cl_half")
        endif ()
        bn2d_library(bn2d_${key}_opencl ${key} ${target})
    endif ()
endforeach ()

# ---- streaming-store builds -------------------------------------------------------------------
# bn2d_<key>_cpu_nt: each CPU ISA's code of the kernel with the vector stores to its tensor
# output non-temporal. The generator emits the optimized module as bitcode (streaming_stores=true
# adds the alignment check those stores need) and tools/streaming_stores.py marks the stores and
# compiles it with llvmlite (Halide 21 cannot emit streaming stores itself). 32-bit indexing
# only; sanitizer builds skip them (the runtime then never streams).
if (BN2D_STREAMING_STORES)
    foreach (key IN LISTS BN2D_STREAMING_KERNELS)
        set(name "bn2d_${key}_cpu_nt")
        set(dir "${CMAKE_CURRENT_BINARY_DIR}/streaming/${name}")
        set(objects "")
        foreach (isa target IN ZIP_LISTS BN2D_CPU_ISAS BN2D_CPU_TARGETS)
            if (NOT isa IN_LIST BN2D_STREAMING_ISAS)
                continue ()
            endif ()
            set(fn "${name}_${isa}")
            add_custom_command(
                OUTPUT "${dir}/${fn}.o"
                COMMAND ${CMAKE_COMMAND} -E make_directory "${dir}"
                COMMAND bn2d_generators -n ${fn} -d 0 -g ${BN2D_KERNEL_${key}_GENERATOR} -f ${fn}
                        -e bitcode -o "${dir}" target=${target}-no_runtime
                        ${BN2D_KERNEL_${key}_PARAMS} streaming_stores=true
                        "schedule_file=${BN2D_SCHEDULE_FILE}"
                COMMAND "${BN2D_PYTHON}" "${CMAKE_CURRENT_SOURCE_DIR}/tools/streaming_stores.py"
                        "${dir}/${fn}.bc" "${dir}/${fn}.o" ${BN2D_KERNEL_${key}_STREAMING}
                DEPENDS bn2d_generators "${BN2D_KERNEL_SCHEDULE_DEPENDENCY}"
                        "${CMAKE_CURRENT_SOURCE_DIR}/tools/streaming_stores.py"
                COMMENT "Streaming-store kernel ${fn}"
                VERBATIM)
            list(APPEND objects "${dir}/${fn}.o")
        endforeach ()
        if (NOT objects)  # BN2D_ONLY_CPU_ISAS left out every streaming ISA
            continue ()
        endif ()
        set_source_files_properties(${objects} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
        add_library(${name} STATIC ${objects})
        set_target_properties(${name} PROPERTIES LINKER_LANGUAGE CXX)
        list(APPEND BN2D_ALL_KERNELS ${name})
    endforeach ()
endif ()

# ---- generated sources ------------------------------------------------------------------------
set(BN2D_GENERATED_INCLUDE_DIR "${CMAKE_CURRENT_BINARY_DIR}/include")
set(note "Auto-generated by cmake/Bn2dKernels.cmake from generators/variants.cmake. Do not edit.")

# The kernels' named arguments (cmake/Bn2dKernelArgs.cmake), from their generated signatures.
set(BN2D_KERNEL_ARGS_HEADER "${CMAKE_CURRENT_BINARY_DIR}/bn2d_kernel_args.h")
set(bn2d_signature_headers "")
foreach (entry IN LISTS BN2D_SIGNATURES)
    string(REGEX REPLACE "^[^=]*=" "" header "${entry}")
    list(APPEND bn2d_signature_headers "${header}")
endforeach ()
add_custom_command(
    OUTPUT "${BN2D_KERNEL_ARGS_HEADER}"
    COMMAND ${CMAKE_COMMAND} "-DOUTPUT=${BN2D_KERNEL_ARGS_HEADER}" "-DKERNELS=${BN2D_SIGNATURES}"
            -P "${CMAKE_CURRENT_SOURCE_DIR}/cmake/Bn2dKernelArgs.cmake"
    DEPENDS ${bn2d_signature_headers} "${CMAKE_CURRENT_SOURCE_DIR}/cmake/Bn2dKernelArgs.cmake"
    COMMENT "Kernel argument structs (bn2d_kernel_args.h)"
    VERBATIM)

# The vocabulary, for the generators, the schedules' machine-file checks, the tuner and the
# runtime (bn2d_vocabulary.h; namespace bn2d::vocabulary).
function(bn2d_c_strings out)
    set(s "")
    foreach (item IN LISTS ARGN)
        string(APPEND s "\"${item}\", ")
    endforeach ()
    set(${out} "${s}" PARENT_SCOPE)
endfunction()
bn2d_c_strings(vocab_dtypes ${BN2D_DTYPES})
bn2d_c_strings(vocab_layouts ${BN2D_LAYOUTS})
bn2d_c_strings(vocab_schedule_ops ${BN2D_SCHEDULE_OPS})
string(REPLACE ";" ", " vocab_layout_enumerators "${BN2D_LAYOUTS}")
set(vocab_schedule_layouts "")
foreach (layout IN LISTS BN2D_SCHEDULE_LAYOUTS)
    if (NOT layout IN_LIST BN2D_LAYOUTS)
        message(FATAL_ERROR "variants.cmake: BN2D_SCHEDULE_LAYOUTS: unknown layout '${layout}'")
    endif ()
    string(APPEND vocab_schedule_layouts "Layout::${layout}, ")
endforeach ()
list(GET BN2D_SCHEDULE_LAYOUTS 0 first_schedule_layout)
set(schedule_kernels "")
foreach (layout IN LISTS BN2D_SCHEDULE_LAYOUTS)
    foreach (op IN LISTS BN2D_SCHEDULE_OPS)
        if (NOT op IN_LIST BN2D_OPS)
            message(FATAL_ERROR "variants.cmake: BN2D_SCHEDULE_OPS: '${op}' is not a kernel of the table")
        endif ()
        if (layout STREQUAL first_schedule_layout)
            list(APPEND schedule_kernels ${op})
        else ()
            list(APPEND schedule_kernels ${op}_${layout})
        endif ()
    endforeach ()
endforeach ()
bn2d_c_strings(vocab_schedule_kernels ${schedule_kernels})
set(runtime_knobs "")
foreach (threshold IN LISTS BN2D_THRESHOLDS)
    string(REGEX REPLACE "^[^.]*\\." "" knob "${threshold}")
    list(APPEND runtime_knobs ${knob})
endforeach ()
list(REMOVE_DUPLICATES runtime_knobs)
bn2d_c_strings(vocab_runtime_knobs ${runtime_knobs})
string(APPEND vocab_runtime_knobs "\"\"")
set(vocab_kernels "")
foreach (op IN LISTS BN2D_OPS)
    string(REPLACE ";" " " params "${BN2D_OP_${op}_PARAMS}")
    set(cpu_only false)
    if (BN2D_OP_${op}_CPU_ONLY)
        set(cpu_only true)
    endif ()
    string(APPEND vocab_kernels "    {\"${op}\", \"${BN2D_OP_${op}_GENERATOR}\", \"${params}\", ${cpu_only}},\n")
endforeach ()
list(LENGTH BN2D_DTYPES vocab_dtype_count)
list(LENGTH BN2D_LAYOUTS vocab_layout_count)
file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/bn2d_vocabulary.h" CONTENT
"// ${note}
#pragma once

namespace bn2d::vocabulary {

// Element types of x, y, dy and dx, in bn2d::DType's order (the runtime checks it).
inline constexpr int kDtypeCount = @vocab_dtype_count@;
inline constexpr const char *kDtypes[kDtypeCount] = {@vocab_dtypes@};

// Layouts with kernels of their own (strides the generator constrains).
enum class Layout { @vocab_layout_enumerators@ };
inline constexpr int kLayoutCount = @vocab_layout_count@;
inline constexpr const char *kLayouts[kLayoutCount] = {@vocab_layouts@};

// Schedules: the ops with knobs of their own, the layouts with schedules of their own (the
// first also schedules every layout not listed), and the kernels a machine file names:
// <op> for the first layout, <op>_<layout> for the others.
inline constexpr const char *kScheduleOps[] = {@vocab_schedule_ops@};
inline constexpr Layout kScheduleLayouts[] = {@vocab_schedule_layouts@};
inline constexpr const char *kScheduleKernels[] = {@vocab_schedule_kernels@};
// The run-time strategy thresholds' knobs (runtime.<op>.<knob>; bn2d_threshold); \"\" ends it.
inline constexpr const char *kRuntimeKnobs[] = {@vocab_runtime_knobs@};

// Every kernel of the table: its generator and generator parameters (besides dtype, layout and
// schedule_file); cpu_only: built for the CPU's 32-bit indexing only.
struct Kernel {
    const char *name, *generator, *params;
    bool cpu_only;
};
inline constexpr Kernel kKernels[] = {
@vocab_kernels@};

}  // namespace bn2d::vocabulary
" @ONLY)

# Public: the ISA enum.
set(enumerators "")
foreach (isa IN LISTS BN2D_CPU_ISAS)
    string(APPEND enumerators "    ${isa},\n")
endforeach ()
file(CONFIGURE OUTPUT "${BN2D_GENERATED_INCLUDE_DIR}/bn2d/cpu_isa.h" CONTENT
"// ${note}
#pragma once

namespace bn2d {

// The ISA variants compiled into every CPU kernel library, best first.
enum class CpuIsa {
${enumerators}};

}  // namespace bn2d
" @ONLY)

# Private: the dispatch table. A KernelSet holds, per op, a [dtype][layout] array of kernels
# (null where the table has no such variant); every variant of an op has the same signature.
set(includes "")
set(members "")
set(names "")
set(cpu_sets "")
set(gpu_sets "")
foreach (key IN LISTS BN2D_KERNELS)
    string(APPEND names "    \"${key}\",\n")
    set(libraries "")
    foreach (isa IN LISTS BN2D_CPU_ISAS)
        list(APPEND libraries cpu_${isa})
    endforeach ()
    if (NOT BN2D_KERNEL_${key}_CPU_ONLY)
        foreach (isa IN LISTS BN2D_CPU_LARGE_ISAS)
            list(APPEND libraries cpu_large_${isa})
        endforeach ()
        list(APPEND libraries ${BN2D_GPU_BUILT})
    endif ()
    foreach (library IN LISTS libraries)
        string(APPEND includes "#include \"bn2d_${key}_${library}.h\"\n")
    endforeach ()
endforeach ()
foreach (op IN LISTS BN2D_OPS)
    list(GET BN2D_OP_${op}_DTYPES 0 d0)
    list(GET BN2D_OP_${op}_LAYOUTS 0 l0)
    string(APPEND members "    decltype(&bn2d_${op}_${d0}_${l0}_cpu_${signature_isa}) ${op}[kDtypeCount][kLayoutCount];\n")
endforeach ()
# The initializer of one KernelSet: bn2d_<key>_<suffix> for every key of the table (or of
# ARGN when given), nullptr elsewhere.
function(bn2d_kernel_set_initializer suffix out)
    set(keys ${BN2D_KERNELS})
    if (ARGN)
        set(keys ${ARGN})
    endif ()
    set(init "")
    foreach (op IN LISTS BN2D_OPS)
        string(APPEND init "{")
        foreach (dtype IN LISTS BN2D_DTYPES)
            string(APPEND init "{")
            foreach (layout IN LISTS BN2D_LAYOUTS)
                set(key "${op}_${dtype}_${layout}")
                if (key IN_LIST keys)
                    string(APPEND init "bn2d_${key}_${suffix}, ")
                else ()
                    string(APPEND init "nullptr, ")
                endif ()
            endforeach ()
            string(APPEND init "}, ")
        endforeach ()
        string(APPEND init "}, ")
    endforeach ()
    set(${out} "${init}" PARENT_SCOPE)
endfunction()
# The kernels built for GPUs and with 64-bit indexing: all but CPU_ONLY ones.
set(bn2d_all_backend_keys "")
foreach (key IN LISTS BN2D_KERNELS)
    if (NOT BN2D_KERNEL_${key}_CPU_ONLY)
        list(APPEND bn2d_all_backend_keys ${key})
    endif ()
endforeach ()
set(entry_decls "")
foreach (isa target IN ZIP_LISTS BN2D_CPU_ISAS BN2D_CPU_TARGETS)
    bn2d_target_features(${target} features)
    set(feature_list "")
    foreach (f IN LISTS features)
        string(APPEND feature_list "halide_target_feature_${f}, ")
    endforeach ()
    set(large_fns "")
    set(has_large false)
    bn2d_kernel_set_initializer("cpu_${isa}" fns)
    if (isa IN_LIST BN2D_CPU_LARGE_ISAS)
        bn2d_kernel_set_initializer("cpu_large_${isa}" large_fns ${bn2d_all_backend_keys})
        set(has_large true)
    endif ()
    set(nt_fns "")
    if (BN2D_STREAMING_STORES AND BN2D_STREAMING_KERNELS AND isa IN_LIST BN2D_STREAMING_ISAS)
        foreach (key IN LISTS BN2D_STREAMING_KERNELS)
            string(APPEND entry_decls "extern \"C\" decltype(bn2d_${key}_cpu_${isa}) bn2d_${key}_cpu_nt_${isa};\n")
        endforeach ()
        bn2d_kernel_set_initializer("cpu_nt_${isa}" nt_fns ${BN2D_STREAMING_KERNELS})
    endif ()
    string(APPEND cpu_sets "    {\"${isa}\", \"${target}\", {${feature_list}halide_target_feature_end}, {${fns}}, ${has_large}, {${large_fns}}, {${nt_fns}}},\n")
endforeach ()
set(gpu_backends cuda opencl)
set(gpu_set_names kCudaKernels kOpenclKernels)
foreach (backend set_name IN ZIP_LISTS gpu_backends gpu_set_names)
    # A backend not built (BN2D_GPU off, or left out of BN2D_GPU_BACKENDS) has an empty set,
    # which the runtime refuses with the reason.
    if (backend IN_LIST BN2D_GPU_BUILT)
        bn2d_kernel_set_initializer("${backend}" fns ${bn2d_all_backend_keys})
        string(APPEND gpu_sets "inline const KernelSet ${set_name}{${fns}};\n")
        string(APPEND gpu_sets "constexpr bool ${set_name}Built = true;\n")
    else ()
        string(APPEND gpu_sets "inline const KernelSet ${set_name}{};\n")
        string(APPEND gpu_sets "constexpr bool ${set_name}Built = false;\n")
    endif ()
endforeach ()
set(cpu_only_names "")
foreach (key IN LISTS BN2D_KERNELS)
    if (BN2D_KERNEL_${key}_CPU_ONLY)
        string(APPEND cpu_only_names "    \"${key}\",\n")
    endif ()
endforeach ()
set(streaming_names "")
set(streaming_isas "")
if (BN2D_STREAMING_STORES AND BN2D_STREAMING_KERNELS)
    foreach (key IN LISTS BN2D_STREAMING_KERNELS)
        string(APPEND streaming_names "    \"${key}\",\n")
    endforeach ()
    foreach (isa IN LISTS BN2D_CPU_ISAS)
        if (isa IN_LIST BN2D_STREAMING_ISAS)
            string(APPEND streaming_isas "    \"${isa}\",\n")
        endif ()
    endforeach ()
endif ()
# The runtime's strategy thresholds (bn2d_threshold in the table), from the machine file's
# runtime.<op>.<knob> lines (the generators check the file's vocabulary): 0 when not set.
file(STRINGS "${BN2D_SCHEDULE_FILE}" runtime_lines REGEX "^[ \t]*runtime\\.")
set(thresholds "")
foreach (threshold IN LISTS BN2D_THRESHOLDS)
    set(value 0)
    string(REPLACE "." "\\." pattern "${threshold}")
    foreach (line IN LISTS runtime_lines)
        if (line MATCHES "^[ \t]*runtime\\.${pattern}[ \t]*=[ \t]*([0-9]+)")
            set(value ${CMAKE_MATCH_1})
        endif ()
    endforeach ()
    string(REPLACE "." ";" op_knob "${threshold}")
    list(GET op_knob 0 op)
    list(GET op_knob 1 knob)
    string(APPEND thresholds "    {\"${op}\", \"${knob}\", ${value}},\n")
endforeach ()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${BN2D_SCHEDULE_FILE}")
list(LENGTH BN2D_KERNELS kernel_count)
list(LENGTH BN2D_DTYPES dtype_count)
list(LENGTH BN2D_LAYOUTS layout_count)
string(REPLACE ";" " " cpu_targets_str "${BN2D_CPU_TARGETS}")
file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/bn2d_kernel_table.h" CONTENT
"// ${note}
#pragma once

#include <string_view>

#include \"HalideRuntime.h\"
@includes@
// The streaming-store builds (tools/streaming_stores.py), one function per ISA.
@entry_decls@
namespace bn2d::detail {

// Indices: bn2d::DType order (f32, bf16, f16, f64) and detail::Layout (nchw, nhwc, strided).
constexpr int kDtypeCount = @dtype_count@;
constexpr int kLayoutCount = @layout_count@;

// One member per kernel of the table, indexed [dtype][layout]; null where not built.
struct KernelSet {
@members@};

constexpr int kKernelCount = @kernel_count@;
constexpr const char *kKernelNames[kKernelCount] = {
@names@};
// The kernels built for the CPU only, 32-bit indexing only (CPU_ONLY in the table); \"\" ends it.
constexpr const char *kCpuOnlyKernelNames[] = {
@cpu_only_names@\"\"};
// The kernels also built with streaming stores, and the ISAs they are built for
// (CpuIsaEntry::streaming); \"\" ends each list.
constexpr const char *kStreamingKernelNames[] = {
@streaming_names@\"\"};
constexpr const char *kStreamingIsaNames[] = {
@streaming_isas@\"\"};

// CPU ISAs, best first, in CpuIsa order. features ends with halide_target_feature_end.
// large: the same kernels built with 64-bit indexing (large_buffers), for ISAs marked
// LARGE_BUFFERS in the table; the last ISA always has them when any does.
// streaming: the kernels marked STREAMING in the table, built with streaming stores to their
// tensor output (null elsewhere, and everywhere without BN2D_STREAMING_STORES).
struct CpuIsaEntry {
    const char *name;
    const char *target;
    halide_target_feature_t features[8];
    KernelSet kernels;
    bool has_large;
    KernelSet large;
    KernelSet streaming;
};
inline const CpuIsaEntry kCpuIsas[] = {
@cpu_sets@};

@gpu_sets@
constexpr const char *kCpuTargets = \"@cpu_targets_str@\";
constexpr const char *kCudaTarget = \"@BN2D_CUDA_TARGET@\";
constexpr const char *kOpenclTarget = \"@BN2D_OPENCL_TARGET@\";
constexpr const char *kScheduleMachine = \"@BN2D_SCHEDULE_MACHINE@\";
constexpr const char *kScheduleFile = \"@BN2D_SCHEDULE_FILE@\";
// The run-time strategy thresholds (bn2d_threshold in the table: runtime.<op>.<knob>); a null
// op ends the list.
struct Threshold {
    const char *op, *knob;
    long long value;
};
inline constexpr Threshold kThresholds[] = {
@thresholds@    {nullptr, nullptr, 0}};
// The value of runtime.<op>.<knob>; 0 for a threshold the table does not list.
inline long long threshold(std::string_view op, std::string_view knob) {
    for (const Threshold *t = kThresholds; t->op; ++t)
        if (op == t->op && knob == t->knob) return t->value;
    return 0;
}
constexpr const char *kHalideVersion = \"@Halide_VERSION@\";

}  // namespace bn2d::detail
" @ONLY)

# The table as a list, for tests/other_arch_test.cmake.
set(lines "")
foreach (key IN LISTS BN2D_KERNELS)
    string(REPLACE ";" " " params "${BN2D_KERNEL_${key}_PARAMS}")
    string(APPEND lines "${key} ${BN2D_KERNEL_${key}_GENERATOR} ${params}\n")
endforeach ()
set(BN2D_KERNELS_FILE "${CMAKE_CURRENT_BINARY_DIR}/bn2d_kernels.txt")
file(CONFIGURE OUTPUT "${BN2D_KERNELS_FILE}" CONTENT "${lines}")
