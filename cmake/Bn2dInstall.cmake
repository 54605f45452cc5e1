# cmake --install: headers, the static libraries (module, kernels, Halide runtime) and a CMake
# package. An app does find_package(bn2d) and links bn2d::bn2d.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(DIRECTORY runtime/include/bn2d ${BN2D_GENERATED_INCLUDE_DIR}/bn2d
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS bn2d ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
# SyncBatchNorm2d's communicators, when built: bn2d::mpi, bn2d::nccl.
set(BN2D_WITH_MPI OFF)
set(BN2D_WITH_NCCL OFF)
if (TARGET bn2d_mpi)
    install(TARGETS bn2d_mpi ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
    set(BN2D_WITH_MPI ON)
endif ()
if (TARGET bn2d_nccl)
    install(TARGETS bn2d_nccl ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
    set(BN2D_WITH_NCCL ON)
endif ()
# bn2d::halide: the algorithm and the stage schedules, header-only.
install(FILES generators/bn2d_algorithm.h schedules/stage_schedules.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/bn2d/halide)

# The kernel libraries and the runtime are imported targets made by Halide's helpers: install
# their archives as files, and name them in the package config.
set(bn2d_installed_archives "")
foreach (lib IN LISTS BN2D_ALL_KERNELS ITEMS bn2d_halide_support)
    install(FILES $<TARGET_FILE:${lib}> DESTINATION ${CMAKE_INSTALL_LIBDIR}/bn2d)
    list(APPEND bn2d_installed_archives "lib${lib}.a")
endforeach ()

set(BN2D_CONFIG_ARCHIVES "${bn2d_installed_archives}")
set(BN2D_CUDA_TARGET_IF_BUILT "")
set(BN2D_OPENCL_TARGET_IF_BUILT "")
if ("cuda" IN_LIST BN2D_GPU_BUILT)
    set(BN2D_CUDA_TARGET_IF_BUILT "${BN2D_CUDA_TARGET}")
endif ()
if ("opencl" IN_LIST BN2D_GPU_BUILT)
    set(BN2D_OPENCL_TARGET_IF_BUILT "${BN2D_OPENCL_TARGET}")
endif ()
configure_package_config_file(cmake/bn2dConfig.cmake.in
    "${CMAKE_CURRENT_BINARY_DIR}/bn2dConfig.cmake"
    INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/bn2d)
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/bn2dConfigVersion.cmake"
    COMPATIBILITY SameMinorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/bn2dConfig.cmake"
              "${CMAKE_CURRENT_BINARY_DIR}/bn2dConfigVersion.cmake"
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/bn2d)
