# ctest script: every kernel of the variant table builds for a second architecture's CPU
# (arm-64-linux by default), so that neither the algorithm nor the CPU schedules assume x86
# (vector widths, x86-only intrinsics, target features). The generator runs as the build runs
# it, with the table's parameters and the build's machine file, emitting objects that are
# checked to exist; nothing is linked or run (no cross toolchain is needed).
# Inputs: -DGENERATOR_EXE -DWORK_DIR -DKERNELS_FILE (lines "<key> <generator> <params...>")
#         -DSCHEDULE_FILE [-DTARGET=arm-64-linux-user_context] [-DDTYPES=f32,f16: the kernels of
#         these dtypes only (the two whose arithmetic differs by architecture: float16 is
#         native on arm-64 and emulated on x86; bfloat16 and float64 are not), all when empty]
if (NOT TARGET)
    set(TARGET arm-64-linux-user_context)
endif ()
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
string(REPLACE "," ";" DTYPES "${DTYPES}")
file(STRINGS "${KERNELS_FILE}" all_kernels)
set(kernels "")
foreach (line IN LISTS all_kernels)
    string(REGEX MATCH " dtype=([a-z0-9]+)" _ "${line}")
    if (NOT DTYPES OR CMAKE_MATCH_1 IN_LIST DTYPES)
        list(APPEND kernels "${line}")
    endif ()
endforeach ()
list(LENGTH kernels count)
if (count EQUAL 0)
    message(FATAL_ERROR "no kernels in ${KERNELS_FILE}")
endif ()
foreach (line IN LISTS kernels)
    string(REPLACE " " ";" words "${line}")
    list(POP_FRONT words key generator)
    execute_process(
        COMMAND "${GENERATOR_EXE}" -g ${generator} -f bn2d_${key} -n bn2d_${key} -o "${WORK_DIR}" -e object
                target=${TARGET} ${words} "schedule_file=${SCHEDULE_FILE}"
        RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if (NOT rc EQUAL 0 OR NOT EXISTS "${WORK_DIR}/bn2d_${key}.o")
        message(FATAL_ERROR "${key} does not build for ${TARGET}:\n${out}")
    endif ()
endforeach ()
message(STATUS "all ${count} kernels of the table build for ${TARGET}")
