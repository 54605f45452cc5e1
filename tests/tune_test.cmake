# ctest script: the tuner (tools/tune/) on a tiny budget, interrupted and resumed, then
# the kernel libraries' generator building kernels from the file it wrote.
#   1. CPU: a run killed with SIGINT after a few seconds, then the same command again: it resumes
#      from the journal (candidates replayed, budget counted from the first run), starts no
#      candidate it expects to end past the budget (its own accounting; the wall clock is only
#      reported) and writes a machine file with a header and tuned keys.
#   2. OpenCL (PoCL) when BACKENDS has opencl: the GPU knobs, the same path as CUDA.
#   3. The generator (bn2d_generators, as the build runs it) compiles every tuned kernel with
#      that file on an AOT target of its backend: the file passes the build's key checks.
# Inputs: -DTUNER_EXE -DGENERATOR_EXE -DWORK_DIR -DBACKENDS=cpu[;opencl]
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(budget 30)
set(common --budget-seconds ${budget} --shapes set:tune --reps 3)

function(check_output backend out kernels)
    if (NOT EXISTS "${out}")
        message(FATAL_ERROR "${backend}: no machine file ${out}")
    endif ()
    file(READ "${out}" text)
    foreach (needle IN ITEMS "# Tuned schedule parameters for" "Halide 21" "backend ${backend}"
                             "default    tuned")
        string(FIND "${text}" "${needle}" at)
        if (at EQUAL -1)
            message(FATAL_ERROR "${backend}: '${needle}' missing from ${out}:\n${text}")
        endif ()
    endforeach ()
    foreach (kernel IN LISTS kernels)
        if (NOT text MATCHES "\n${backend}\\.${kernel}\\.[a-z_]+ = [0-9]+\n")
            message(FATAL_ERROR "${backend}: no ${backend}.${kernel}.* key in ${out}:\n${text}")
        endif ()
    endforeach ()
    if (NOT EXISTS "${out}.journal" OR NOT EXISTS "${WORK_DIR}/${backend}.tune.json")
        message(FATAL_ERROR "${backend}: no journal or report data beside ${out}")
    endif ()
endfunction()

# The budget as the tuner accounts for it: it started no search candidate that it expected to
# end past the budget. The wall-clock time is reported, not asserted: the fixed phases (the
# defaults' compile, the final run) take what the machine takes, and a slow or loaded machine
# must not fail the test.
function(check_budget backend log)
    if (NOT log MATCHES "budget: ([0-9]+) search candidates started, ([0-9]+) expected to end past the budget")
        message(FATAL_ERROR "${backend}: no budget accounting from the tuner:\n${log}")
    endif ()
    if (NOT CMAKE_MATCH_2 EQUAL 0)
        message(FATAL_ERROR "${backend}: the tuner started ${CMAKE_MATCH_2} search candidates it "
                            "expected to end past the ${budget} s budget:\n${log}")
    endif ()
    if (NOT log MATCHES "done in ([0-9]+) s of ${budget} s")
        message(FATAL_ERROR "${backend}: the tuner did not finish:\n${log}")
    endif ()
    message(STATUS "${backend}: done in ${CMAKE_MATCH_1} s (wall clock) of a ${budget} s budget")
endfunction()

# generate(<backend> <params file> <kernel> <target>): the build's generator with that file.
function(generate backend params kernel target)
    set(generator bn2d_train_forward)
    set(extra "")
    if (kernel MATCHES "^eval_fwd")
        set(generator bn2d_eval_forward)
    elseif (kernel MATCHES "^(train|eval)_bwd")
        set(generator bn2d_backward)
        string(REGEX REPLACE "_bwd.*" "" mode "${kernel}")
        set(extra mode=${mode})
    endif ()
    set(layout nchw)
    if (kernel MATCHES "_nhwc$")
        set(layout nhwc)
    endif ()
    set(dir "${WORK_DIR}/${backend}_${kernel}")
    file(MAKE_DIRECTORY "${dir}")
    execute_process(
        COMMAND "${GENERATOR_EXE}" -g ${generator} -o "${dir}" -e static_library,h
                target=${target} layout=${layout} ${extra} "schedule_file=${params}"
        RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if (NOT rc EQUAL 0)
        message(FATAL_ERROR "${backend} ${kernel}: the tuned file does not build:\n${out}")
    endif ()
    message(STATUS "${backend} ${kernel}: built with ${params}")
endfunction()

# 1. CPU, interrupted then resumed.
set(cpu_kernels train_fwd eval_bwd_nhwc)
set(out "${WORK_DIR}/cpu.params")
set(args ${common} --backend cpu --kernels train_fwd,eval_bwd_nhwc --autoschedulers Li2018
         --out "${out}" --report "${WORK_DIR}/cpu.tune")
# Interrupted once the journal holds a measured candidate (a fixed delay raced the first
# candidate's compile on a slow machine: 0 measured, nothing to resume), at most after 25 s.
execute_process(
    COMMAND ${CMAKE_COMMAND} -E env "JOURNAL=${out}.journal" bash -c [[
        set -m  # job control: a background job of a plain script ignores SIGINT
        "$@" & pid=$!
        for i in $(seq 250); do
            grep -q '^eval ' "$JOURNAL" 2>/dev/null && break
            kill -0 $pid 2>/dev/null || break
            sleep 0.1
        done
        kill -INT $pid 2>/dev/null
        wait $pid]] tuner "${TUNER_EXE}" ${args}
    RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
if (rc EQUAL 0)
    message(FATAL_ERROR "cpu: the first run was to be interrupted, but it finished:\n${log}")
endif ()
execute_process(COMMAND "${TUNER_EXE}" ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
string(REPLACE "\r" "\n" log "${log}")
if (NOT rc EQUAL 0)
    message(FATAL_ERROR "cpu: the resumed run failed:\n${log}")
endif ()
if (NOT log MATCHES "resuming [^\n]*: ([1-9][0-9]*) candidates measured, ([0-9]+) s used")
    message(FATAL_ERROR "cpu: the second run did not resume from the journal:\n${log}")
endif ()
if (NOT log MATCHES "\\(([1-9][0-9]*) replayed\\)")
    message(FATAL_ERROR "cpu: nothing replayed from the journal:\n${log}")
endif ()
check_budget(cpu "${log}")
check_output(cpu "${out}" "${cpu_kernels}")
foreach (kernel IN LISTS cpu_kernels)
    generate(cpu "${out}" ${kernel} x86-64-linux-avx2-fma-f16c)
endforeach ()

# 2. OpenCL on PoCL.
if ("opencl" IN_LIST BACKENDS)
    set(out "${WORK_DIR}/opencl.params")
    execute_process(
        COMMAND "${TUNER_EXE}" ${common} --backend opencl --kernels train_bwd --autoschedulers none
                --out "${out}" --report "${WORK_DIR}/opencl.tune"
        RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
    string(REPLACE "\r" "\n" log "${log}")
    if (NOT rc EQUAL 0)
        message(FATAL_ERROR "opencl: the tuner failed:\n${log}")
    endif ()
    check_budget(opencl "${log}")
    check_output(opencl "${out}" train_bwd)
    generate(opencl "${out}" train_bwd x86-64-linux-opencl-cl_doubles)
endif ()
