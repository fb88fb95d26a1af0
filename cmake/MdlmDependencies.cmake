# Finds what <mdlm/...> needs. Used by our own build and, installed, by mdlmConfig.cmake.
# Everything comes from distribution packages (Debian/Ubuntu: libopenblas-dev,
# nlohmann-json3-dev, libutf8proc-dev; the CUDA toolkit for the CUDA backend).
include(CMakeFindDependencyMacro)
list(APPEND CMAKE_MODULE_PATH ${CMAKE_CURRENT_LIST_DIR})

find_dependency(OpenMP)
if(NOT DEFINED BLA_VENDOR)
  set(BLA_VENDOR OpenBLAS) # cblas_sgemm/dgemm; plain reference BLAS has no cblas symbols
endif()
find_dependency(BLAS)
find_dependency(nlohmann_json 3)
find_dependency(Utf8proc)
find_package(CUDAToolkit QUIET)
