# Finds what <mdlm/...> needs. Used by our own build and, installed, by mdlmConfig.cmake.
# Everything comes from distribution packages (Debian/Ubuntu: libopenblas-dev,
# nlohmann-json3-dev, libutf8proc-dev; the CUDA toolkit for the CUDA backend).
include(CMakeFindDependencyMacro)
list(APPEND CMAKE_MODULE_PATH ${CMAKE_CURRENT_LIST_DIR})

find_dependency(OpenMP)
# Host GEMM uses cblas from OpenBLAS. Prefer its OpenMP build (Debian/Ubuntu:
# libopenblas-openmp-dev): our OpenMP loops and the BLAS then share one thread pool, where
# the pthread build's threads and spinning OpenMP workers fight over the cores (measured on
# 2 cores: a 256^3 GEMM + GELU took 12 ms with both pools, 1.3 ms with one).
# MDLM_STATIC_BLAS links the OpenMP build of OpenBLAS statically (with libgfortran and
# libquadmath), for binaries that run where OpenBLAS is not installed (scripts/device-build.sh).
option(MDLM_STATIC_BLAS "Link OpenBLAS (and its Fortran runtime) statically" OFF)
if(NOT TARGET BLAS::BLAS AND MDLM_STATIC_BLAS)
  find_library(MDLM_OPENBLAS_STATIC NAMES libopenblas.a
               PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH REQUIRED)
  find_path(MDLM_OPENBLAS_OPENMP_INCLUDE NAMES cblas.h
            PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH REQUIRED)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libgfortran.a OUTPUT_VARIABLE _mdlm_gfortran
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libquadmath.a OUTPUT_VARIABLE _mdlm_quadmath
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT EXISTS "${_mdlm_gfortran}" OR NOT EXISTS "${_mdlm_quadmath}")
    message(FATAL_ERROR "MDLM_STATIC_BLAS: libgfortran.a / libquadmath.a not found (install gfortran)")
  endif()
  add_library(BLAS::BLAS UNKNOWN IMPORTED)
  set_target_properties(BLAS::BLAS PROPERTIES IMPORTED_LOCATION "${MDLM_OPENBLAS_STATIC}"
                        INTERFACE_INCLUDE_DIRECTORIES "${MDLM_OPENBLAS_OPENMP_INCLUDE}"
                        INTERFACE_LINK_LIBRARIES "${_mdlm_gfortran};${_mdlm_quadmath};m;pthread")
endif()
if(NOT TARGET BLAS::BLAS)
  find_library(MDLM_OPENBLAS_OPENMP NAMES openblas
               PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
  find_path(MDLM_OPENBLAS_OPENMP_INCLUDE NAMES cblas.h
            PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
  if(MDLM_OPENBLAS_OPENMP AND MDLM_OPENBLAS_OPENMP_INCLUDE)
    add_library(BLAS::BLAS UNKNOWN IMPORTED)
    set_target_properties(BLAS::BLAS PROPERTIES IMPORTED_LOCATION "${MDLM_OPENBLAS_OPENMP}"
                          INTERFACE_INCLUDE_DIRECTORIES "${MDLM_OPENBLAS_OPENMP_INCLUDE}")
  else()
    if(NOT DEFINED BLA_VENDOR)
      set(BLA_VENDOR OpenBLAS) # cblas_sgemm/dgemm; plain reference BLAS has no cblas symbols
    endif()
    find_dependency(BLAS)
  endif()
endif()
# The Host's fp32 GEMM (backend/host_blas.hpp): oneDNN's sgemm where libdnnl is installed
# (Debian/Ubuntu: libdnnl-dev), OpenBLAS otherwise; fp64 always goes through OpenBLAS.
# -DMDLM_HOST_GEMM=openblas keeps oneDNN out (scripts/device-build.sh, whose binaries run
# where it is not installed). Measured choice: README, "Host GEMM".
set(MDLM_HOST_GEMM "auto" CACHE STRING "Host fp32 GEMM library: auto, onednn or openblas")
set_property(CACHE MDLM_HOST_GEMM PROPERTY STRINGS auto onednn openblas)
if(NOT TARGET mdlm::host_sgemm)
  if(NOT MDLM_HOST_GEMM STREQUAL "openblas")
    find_library(MDLM_DNNL_LIBRARY NAMES dnnl)
    find_path(MDLM_DNNL_INCLUDE NAMES oneapi/dnnl/dnnl.h)
    if(MDLM_DNNL_LIBRARY AND MDLM_DNNL_INCLUDE)
      add_library(mdlm::host_sgemm UNKNOWN IMPORTED)
      set_target_properties(mdlm::host_sgemm PROPERTIES IMPORTED_LOCATION "${MDLM_DNNL_LIBRARY}"
                            INTERFACE_INCLUDE_DIRECTORIES "${MDLM_DNNL_INCLUDE}"
                            INTERFACE_COMPILE_DEFINITIONS MDLM_HOST_SGEMM_ONEDNN=1)
    elseif(MDLM_HOST_GEMM STREQUAL "onednn")
      message(FATAL_ERROR "MDLM_HOST_GEMM=onednn: oneDNN not found (install libdnnl-dev)")
    endif()
  endif()
  if(NOT TARGET mdlm::host_sgemm)
    add_library(mdlm::host_sgemm INTERFACE IMPORTED)
  endif()
endif()
find_dependency(nlohmann_json 3)
find_dependency(Utf8proc)
find_package(CUDAToolkit QUIET)
