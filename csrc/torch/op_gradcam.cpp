// torch.ops.unitscope.gradcam and gradcam_out on the CPU: the compiled Grad-CAM kernel
// (csrc/cpu/gradcam.cpp) for the calls the cpp backend serves, the Python kernel for the rest.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>

#include <initializer_list>

#include "torch_ops.h"
#include "unitscope/gradcam.h"

namespace unitscope::torch_ops {

namespace {

struct Cam {
  at::Tensor A, G, W;  // contiguous; W float32 (B, T, K) or undefined
  GradcamArgs args;
};

// The inputs of a call the compiled kernel serves (everything but out and the output size), or
// nullopt (the flags as the schemas of python/unitscope/kernels/_ops.py order them).
std::optional<Cam> inputs(const Stack& s, size_t n, bool relu, bool align_corners, bool normalize,
                          const c10::IValue& backend, const c10::IValue& num_threads) {
  const int nt = threads(num_threads);
  if (!serves(backend) || nt < 0) return std::nullopt;
  auto A = cpu_tensor(arg(s, n, 0), 4, std::nullopt, false);
  if (!A || float_code(A->scalar_type()) < 0) return std::nullopt;
  const int64_t B = A->size(0), K = A->size(1), h = A->size(2), w = A->size(3);
  if (K < 1 || h < 1 || w < 1) return std::nullopt;
  const c10::IValue &g = arg(s, n, 1), &wt = arg(s, n, 2);
  if (g.isNone() == wt.isNone()) return std::nullopt;
  Cam c;
  int64_t T = 1;
  if (!g.isNone()) {
    auto G = cpu_tensor(g, 4, A->scalar_type(), false);
    if (!G || G->sizes() != A->sizes()) return std::nullopt;
    c.G = G->contiguous();
  } else {
    auto W = cpu_tensor(wt, 3, std::nullopt, false);
    if (!W || !W->is_floating_point() || W->size(0) != B || W->size(2) != K || W->size(1) < 1) return std::nullopt;
    T = W->size(1);
    c.W = W->to(at::kFloat).contiguous();
  }
  c.A = A->contiguous();
  GradcamArgs& a = c.args;
  a.activations = c.A.data_ptr();
  a.gradients = c.G.defined() ? c.G.data_ptr() : nullptr;
  a.weights = c.W.defined() ? c.W.data_ptr<float>() : nullptr;
  a.out = nullptr;
  a.workspace = nullptr;
  a.act_dtype = float_code(A->scalar_type());
  a.B = B; a.T = T; a.K = K; a.h = h; a.w = w; a.H = 0; a.W = 0;
  a.relu = relu; a.align_corners = align_corners; a.normalize = normalize;
  a.num_threads = nt;
  return c;
}

// Runs the kernel into out; false when it refused the arguments (nothing written then).
bool run(GradcamArgs& a, const at::Tensor& out) {
  a.out = out.data_ptr<float>();
  return a.B == 0 || run_or_refuse([&a] { gradcam_cpu(a); });
}

// gradcam(Tensor activations, Tensor? gradients, Tensor? weights, bool relu, SymInt out_h,
//         SymInt out_w, bool align_corners, bool normalize, str? backend, int? num_threads) -> Tensor
void gradcam_kernel(const c10::OperatorHandle&, Stack* stack) {
  constexpr size_t n = 10;
  const Stack& s = *stack;
  const c10::IValue &oh = arg(s, n, 4), &ow = arg(s, n, 5);
  if (oh.isInt() && ow.isInt() && oh.toInt() >= 1 && ow.toInt() >= 1) {
    auto c = inputs(s, n, arg(s, n, 3).toBool(), arg(s, n, 6).toBool(), arg(s, n, 7).toBool(), arg(s, n, 8),
                    arg(s, n, 9));
    if (c) {
      c->args.H = oh.toInt();
      c->args.W = ow.toInt();
      at::Tensor out = at::empty({c->args.B, c->args.T, c->args.H, c->args.W}, at::TensorOptions(at::kFloat));
      if (run(c->args, out)) {
        torch::jit::drop(*stack, n);
        torch::jit::push(*stack, std::move(out));
        return;
      }
    }
  }
  run_python_kernel("gradcam", stack);
}

// gradcam_out(Tensor activations, Tensor? gradients, Tensor? weights, bool relu, bool align_corners,
//             bool normalize, str? backend, int? num_threads, Tensor(a!) out) -> ()
void gradcam_out_kernel(const c10::OperatorHandle&, Stack* stack) {
  constexpr size_t n = 9;
  const Stack& s = *stack;
  auto out = cpu_tensor(arg(s, n, 8), 4, at::kFloat);
  if (out && !(out->requires_grad() && c10::GradMode::is_enabled())) {
    auto c = inputs(s, n, arg(s, n, 3).toBool(), arg(s, n, 4).toBool(), arg(s, n, 5).toBool(), arg(s, n, 6),
                    arg(s, n, 7));
    if (c && out->size(0) == c->args.B && out->size(1) == c->args.T && out->size(2) >= 1 && out->size(3) >= 1) {
      c->args.H = out->size(2);
      c->args.W = out->size(3);
      if (run(c->args, *out)) {
        torch::jit::drop(*stack, n);
        return;
      }
    }
  }
  run_python_kernel("gradcam_out", stack);
}

// True when grad mode is on and one of the tensors at `indices` requires grad.
bool needs_grad(const Stack& s, size_t n, std::initializer_list<size_t> indices) {
  if (!c10::GradMode::is_enabled()) return false;
  for (size_t i : indices) {
    const c10::IValue& v = arg(s, n, i);
    if (v.isTensor() && v.toTensor().defined() && v.toTensor().requires_grad()) return true;
  }
  return false;
}

// The Autograd kernels. A call that needs a backward goes to the Python kernel's Autograd kernel
// (kernels/_ops.py: it records Grad-CAM's exact backward, or for gradcam_out raises as torch's out=
// functions do); every other call goes below autograd (on the CPU, to the kernels above) without
// entering Python.
void gradcam_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, Stack* stack) {
  if (needs_grad(*stack, 10, {0, 1, 2})) return run_python_kernel("gradcam", stack);
  at::AutoDispatchBelowAutograd below;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

void gradcam_out_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, Stack* stack) {
  if (needs_grad(*stack, 9, {0, 1, 2, 8})) return run_python_kernel("gradcam_out", stack);
  at::AutoDispatchBelowAutograd below;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

}  // namespace
}  // namespace unitscope::torch_ops

TORCH_LIBRARY_IMPL(unitscope, CPU, m) {
  using namespace unitscope::torch_ops;
  m.impl("gradcam", torch::CppFunction::makeFromBoxedFunction<&gradcam_kernel>());
  m.impl("gradcam_out", torch::CppFunction::makeFromBoxedFunction<&gradcam_out_kernel>());
}

TORCH_LIBRARY_IMPL(unitscope, Autograd, m) {
  using namespace unitscope::torch_ops;
  m.impl("gradcam", torch::CppFunction::makeFromBoxedFunction<&gradcam_autograd>());
  m.impl("gradcam_out", torch::CppFunction::makeFromBoxedFunction<&gradcam_out_autograd>());
}
