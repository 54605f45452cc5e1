# ctest script: installs the build into a scratch prefix, builds examples/${APP} against the
# installed package (find_package(bn2d); find_package(Halide) as the main build found it: its
# Halide_DIR and the Python interpreter the Halide wheel's package config asks for), and runs it.
# Inputs: -DBUILD_DIR -DSOURCE_DIR -DAPP -DWORK_DIR -DGENERATOR -DMAKE_PROGRAM -DHALIDE_DIR -DPYTHON
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
    message("${out}")
    if (NOT rc EQUAL 0)
        message(FATAL_ERROR "failed (${rc}): ${ARGN}")
    endif ()
endfunction()
run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples/${APP}" -B "${WORK_DIR}/build"
    -G "${GENERATOR}" "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}" "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" "-DHalide_DIR=${HALIDE_DIR}"
    "-DPython_EXECUTABLE=${PYTHON}" -DCMAKE_BUILD_TYPE=Release)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
if (APP STREQUAL "image_pipeline")
    run("${WORK_DIR}/build/image_pipeline" "${SOURCE_DIR}/examples/image_pipeline/chelsea.png"
        "${WORK_DIR}/image_pipeline.png")
else ()
    run("${WORK_DIR}/build/app")
endif ()
