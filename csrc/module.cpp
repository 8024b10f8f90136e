// The Python module lowrank_kernels._C. Importing it loads this shared library, whose static
// initializers register torch.ops.lowrank_cuda.* (chain_op.cpp); the module itself only
// reports how it was built.

#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>  // CUDART_VERSION

#include <string>

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

#ifndef TORCH_EXTENSION_NAME
#error "TORCH_EXTENSION_NAME must be defined (torch's BuildExtension defines it as _C)"
#endif

#define LRK_STRINGIFY_(...) #__VA_ARGS__
#define LRK_STRINGIFY(...) LRK_STRINGIFY_(__VA_ARGS__)

namespace {

// setup.py passes -DLOWRANK_KERNELS_CUDA_ARCHS="80;90"; depending on how the build tool
// quotes it, the macro arrives as a string literal or as bare tokens (CMake passes 80,90).
// Stringifying it, dropping quote characters and mapping ',' to ';' gives "80;90" always.
std::string cuda_archs() {
#ifdef LOWRANK_KERNELS_CUDA_ARCHS
  std::string raw = LRK_STRINGIFY(LOWRANK_KERNELS_CUDA_ARCHS);
  std::string archs;
  for (char ch : raw) {
    if (ch == ',') {
      archs += ';';
    } else if (ch != '"' && ch != '\\' && ch != ' ') {
      archs += ch;
    }
  }
  return archs;
#else
  return "unknown";
#endif
}

std::string cuda_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["cuda_archs"] = cuda_archs();
  info["cuda_version"] = cuda_version();
#if defined(TORCH_VERSION_MAJOR) && defined(TORCH_VERSION_MINOR) && defined(TORCH_VERSION_PATCH)
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#endif
  info["ops"] = "lowrank_cuda::chain";
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA C++ kernels of lowrank_kernels (registers torch.ops.lowrank_cuda.*)";
  m.def("build_info", &build_info,
        "Build facts: cuda_archs (e.g. '80;90'), cuda_version, torch_version, ops.");
}
