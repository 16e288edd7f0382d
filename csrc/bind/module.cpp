// The unitscope._C module: build facts plus one register_<op>() per csrc/bind/op_<op>.cpp file.
// CMake writes the list of ops into unitscope_ops.inc (one US_OP(name) line per op file).
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace unitscope {
#define US_OP(name) void register_##name(py::module_& m);
#include "unitscope_ops.inc"
#undef US_OP
#ifdef UNITSCOPE_WITH_CUDA
int cuda_device_count(std::string* why);
#endif
}  // namespace unitscope

PYBIND11_MODULE(_C, m) {
  m.doc() = "unitscope compiled kernels (C++17 CPU, CUDA when built with nvcc)";
#ifdef UNITSCOPE_WITH_CUDA
  m.def("cuda_compiled", []() { return true; });
  m.def("cuda_device_count", []() {
    std::string why;
    const int n = unitscope::cuda_device_count(&why);
    return py::make_tuple(n, why);
  });
#else
  m.def("cuda_compiled", []() { return false; });
  m.def("cuda_device_count", []() { return py::make_tuple(0, std::string("built without CUDA")); });
#endif
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
#define US_OP(name) unitscope::register_##name(m);
#include "unitscope_ops.inc"
#undef US_OP
}
