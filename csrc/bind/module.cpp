// The unitscope._C module: build facts plus one register_<op>() per csrc/bind/op_<op>.cpp file.
// CMake writes the list of ops into unitscope_ops.inc (one US_OP(name) line per op file).
#include <pybind11/pybind11.h>

#include <string>

#ifdef UNITSCOPE_WITH_CUDA
#include "unitscope/cuda_probe.h"
#endif

namespace py = pybind11;

namespace unitscope {
#define US_OP(name) void register_##name(py::module_& m);
#include "unitscope_ops.inc"
#undef US_OP
}  // namespace unitscope

PYBIND11_MODULE(_C, m) {
  m.doc() = "unitscope compiled kernels (C++17 CPU, CUDA when built with nvcc)";
#ifdef UNITSCOPE_WITH_CUDA
  m.def("cuda_compiled", []() { return true; });
  // a dict, so that the Python layer's reading of it can be tested with fakes on any machine
  m.def("cuda_probe", []() {
    const unitscope::CudaProbe p = unitscope::cuda_probe();
    py::dict d;
    d["count"] = p.count;
    d["error"] = p.error;
    d["error_name"] = p.error_name;
    d["error_string"] = p.error_string;
    d["driver_version"] = p.driver_version;
    d["runtime_version"] = p.runtime_version;
    d["toolkit_version"] = p.toolkit_version;
    return d;
  });
#else
  m.def("cuda_compiled", []() { return false; });
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
