// The unitscope._torch_ops module: what the op_*.cpp files share, and the module object, whose
// import runs their TORCH_LIBRARY_IMPL registrations.
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "torch_ops.h"
#include "unitscope/common.h"

namespace unitscope::torch_ops {

bool serves(const c10::IValue& backend) {
  if (backend.isNone()) {
    const char* env = std::getenv("UNITSCOPE_BACKEND");
    return env == nullptr || env[0] == '\0' || std::strcmp(env, "cpp") == 0;
  }
  return backend.isString() && backend.toStringRef() == "cpp";
}

int threads(const c10::IValue& num_threads) {
  // as python/unitscope/_backend.py's max_threads(), read once: sysconf reads /sys on every call
  static const int64_t most = std::max<int64_t>(64, 4 * std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  if (num_threads.isNone()) return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), most)));
  if (!num_threads.isInt()) return -1;
  const int64_t n = num_threads.toInt();
  return n >= 1 && n <= most ? static_cast<int>(n) : -1;
}

std::optional<at::Tensor> cpu_tensor(const c10::IValue& v, int64_t dim, std::optional<at::ScalarType> dtype,
                                     bool contiguous) {
  if (!v.isTensor()) return std::nullopt;
  const at::Tensor& t = v.toTensor();
  if (!t.defined() || !t.device().is_cpu() || t.dim() != dim || t.layout() != at::kStrided) return std::nullopt;
  if (dtype && t.scalar_type() != *dtype) return std::nullopt;
  if (contiguous && !t.is_contiguous()) return std::nullopt;
  return t;
}

int float_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    case at::kDouble: return kFloat64;
    default: return -1;
  }
}

void run_python_kernel(const char* name, Stack* stack) {
  const std::string full = std::string("unitscope::_python_") + name;
  c10::Dispatcher::singleton().findSchemaOrThrow(full.c_str(), "").callBoxed(stack);
}

}  // namespace unitscope::torch_ops

static PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_torch_ops",
    "unitscope's compiled CPU kernels as the CPU kernels of torch.ops.unitscope.* (registered on import)",
    -1, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__torch_ops(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr && PyModule_AddStringConstant(m, "torch_version", UNITSCOPE_TORCH_VERSION) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
