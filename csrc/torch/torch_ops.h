// unitscope._torch_ops: the compiled CPU kernels registered as the CPU kernels of torch.ops.unitscope.*
// (docs/embedding.md). Each is a boxed kernel that serves the calls the compiled CPU backend would
// serve (backend None or "cpp", arguments as the front ends pass them) and hands every other call,
// unchanged, to the operator's Python kernel (unitscope::_python_<name>, kernels/_ops.py): the other
// backends, and every argument that is wrong, so that errors are the Python layer's own.
#pragma once
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <cstdint>
#include <exception>
#include <optional>

namespace unitscope::torch_ops {

using Stack = torch::jit::Stack;

// Argument i of a call with n arguments (the last n entries of the stack).
inline const c10::IValue& arg(const Stack& s, size_t n, size_t i) { return s[s.size() - n + i]; }

// True when the compiled CPU kernel serves the call: the backend argument is "cpp", or None with
// UNITSCOPE_BACKEND unset, empty or "cpp" (python/unitscope/_backend.py's select_backend on the CPU,
// where this module is loaded only beside the compiled module).
bool serves(const c10::IValue& backend);

// The thread count for num_threads (None: torch's, capped at max(64, 4 x cores)), or -1 when the
// value is out of range (the Python kernel raises).
int threads(const c10::IValue& num_threads);

// The tensor in v when it is a defined CPU tensor of `dtype` (any dtype when nullopt), `dim`
// dimensions and contiguous; else nullopt.
std::optional<at::Tensor> cpu_tensor(const c10::IValue& v, int64_t dim, std::optional<at::ScalarType> dtype,
                                     bool contiguous = true);

// unitscope's element code of a floating dtype (csrc/include/unitscope/common.h), -1 for others.
int float_code(at::ScalarType t);

// Run the call on the stack with the Python kernel of operator `name` (unitscope::_python_<name>,
// the same schema); it pops the arguments and pushes the results as this kernel would.
void run_python_kernel(const char* name, Stack* stack);

// Releases the GIL, when this thread holds it, for the life of the object.
class ReleaseGIL {
 public:
  ReleaseGIL() : state_(Py_IsInitialized() && PyGILState_Check() ? PyEval_SaveThread() : nullptr) {}
  ~ReleaseGIL() {
    if (state_) PyEval_RestoreThread(state_);
  }
  ReleaseGIL(const ReleaseGIL&) = delete;
  ReleaseGIL& operator=(const ReleaseGIL&) = delete;

 private:
  PyThreadState* state_;
};

// Runs `kernel` without the GIL; false when it threw. The compiled kernels refuse their arguments
// (a size they cannot index, a label or category out of range, a tampered quantile state) before
// writing anything, so the caller then hands the call to the Python kernel, which runs it again and
// raises the error with its Python type and message.
template <class Kernel>
bool run_or_refuse(Kernel kernel) {
  try {
    ReleaseGIL no_gil;
    kernel();
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

}  // namespace unitscope::torch_ops
