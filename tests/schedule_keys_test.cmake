# ctest script: a machine file with a misspelled, unknown or misplaced key fails the generator
# (and so the build) with a message naming the file, the line and the key; a valid file with
# cuda., opencl. and gpu. keys passes. Inputs: -DGENERATOR_EXE -DWORK_DIR
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# run_case(<name> <generator> <target> <file text> <expected regex or "">)
function(run_case name generator target text expect)
    set(params "${WORK_DIR}/${name}.params")
    file(WRITE "${params}" "${text}")
    file(MAKE_DIRECTORY "${WORK_DIR}/${name}")
    execute_process(
        COMMAND "${GENERATOR_EXE}" -g ${generator} -o "${WORK_DIR}/${name}" -e object
                target=${target} "schedule_file=${params}"
        RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if (expect STREQUAL "")
        if (NOT rc EQUAL 0)
            message(FATAL_ERROR "${name}: a valid machine file was rejected:\n${out}")
        endif ()
    elseif (rc EQUAL 0)
        message(FATAL_ERROR "${name}: the generator accepted a bad machine file:\n${text}")
    elseif (NOT out MATCHES "${expect}")
        message(FATAL_ERROR "${name}: expected a message matching '${expect}', got:\n${out}")
    endif ()
    message(STATUS "${name}: ok")
endfunction()

set(cpu x86-64-linux-avx2-fma-f16c)
run_case(wildcard_knob_typo bn2d_eval_forward ${cpu} "# tuned\ncpu.*.acumulators = 4\n"
         "wildcard_knob_typo.params:2: unknown knob 'acumulators' in 'cpu\\.\\*\\.acumulators'")
run_case(kernel_typo bn2d_eval_forward ${cpu} "cpu.*.chunk = 4096\ncpu.train_fwdd.chunk = 1\n"
         "kernel_typo.params:2: unknown kernel 'train_fwdd' in 'cpu\\.train_fwdd\\.chunk'")
run_case(backend_typo bn2d_eval_forward ${cpu} "\n\nmetal.*.threads = 1\n"
         "backend_typo.params:3: unknown backend 'metal'")
run_case(cpu_knob_on_gpu bn2d_eval_forward ${cpu} "gpu.*.accumulators = 8\n"
         "cpu_knob_on_gpu.params:1: unknown knob 'accumulators' in 'gpu\\.\\*\\.accumulators'")
# A knob that is gone: the vector width is each ISA's natural one.
run_case(removed_knob bn2d_eval_forward ${cpu} "cpu.*.vector_lanes = 8\n"
         "removed_knob.params:1: unknown knob 'vector_lanes' in 'cpu\\.\\*\\.vector_lanes'")
run_case(set_twice bn2d_eval_forward ${cpu} "cpu.*.chunk = 4\ncpu.*.chunk = 8\n"
         "set_twice.params:2: 'cpu\\.\\*\\.chunk' is already set on line 1")
run_case(not_an_integer bn2d_eval_forward ${cpu} "cpu.eval_fwd.grain = lots\n"
         "not_an_integer.params:1: 'cpu\\.eval_fwd\\.grain' is not an integer")
run_case(no_kernel bn2d_eval_forward ${cpu} "cpu.chunk = 4\n"
         "no_kernel.params:1: 'cpu\\.chunk' is not <backend>\\.<kernel>\\.<knob>")
# Valid: per-backend GPU keys and the shared gpu default, on a CUDA and an OpenCL target.
set(gpu_text "cuda.*.threads = 64\nopencl.*.threads = 32\ngpu.*.rows = 4\ncpu.*.chunk = 4096\n")
run_case(valid_cuda bn2d_eval_forward x86-64-linux-cuda-cuda_capability_80 "${gpu_text}" "")
run_case(valid_opencl bn2d_train_forward x86-64-linux-opencl-cl_doubles "${gpu_text}" "")
