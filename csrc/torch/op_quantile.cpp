// torch.ops.unitscope.exact_quantile_update_ and quantile_sketch_update_ on the CPU: the compiled
// updates (csrc/cpu/exact_quantile.cpp, quantile.cpp) for the calls the cpp backend serves, the
// Python kernels for the rest.
#include "torch_ops.h"
#include "unitscope/quantile.h"

namespace unitscope::torch_ops {

namespace {

// x: a contiguous (outer, K, inner) CPU tensor of a floating dtype with K >= 1, or nullopt.
std::optional<at::Tensor> values(const c10::IValue& v) {
  auto x = cpu_tensor(v, 3, std::nullopt);
  if (!x || float_code(x->scalar_type()) < 0 || x->size(1) < 1) return std::nullopt;
  return x;
}

// exact_quantile_update_(Tensor x, Tensor(a!) buf, Tensor(b!) fill, Tensor(c!) thr, Tensor(d!) nan,
//                        SymInt m, bool negate, str? backend, int? num_threads) -> ()
void exact_quantile_kernel(const c10::OperatorHandle&, Stack* stack) {
  constexpr size_t n = 9;
  const Stack& s = *stack;
  const int nt = threads(arg(s, n, 8));
  auto x = values(arg(s, n, 0));
  auto buf = cpu_tensor(arg(s, n, 1), 2, at::kFloat);
  auto fill = cpu_tensor(arg(s, n, 2), 1, at::kLong);
  auto thr = cpu_tensor(arg(s, n, 3), 1, at::kFloat);
  auto nan = cpu_tensor(arg(s, n, 4), 1, at::kLong);
  const c10::IValue& m = arg(s, n, 5);
  if (serves(arg(s, n, 7)) && nt >= 0 && x && buf && fill && thr && nan && m.isInt()) {
    const int64_t K = x->size(1);
    if (buf->size(0) == K && fill->size(0) == K && thr->size(0) == K && nan->size(0) == K && m.toInt() >= 1 &&
        m.toInt() < buf->size(1)) {
      ExactQuantileArgs a;
      a.x = x->data_ptr();
      a.dtype = float_code(x->scalar_type());
      a.outer = x->size(0); a.K = K; a.inner = x->size(2);
      a.start = 0; a.length = 0;
      a.buf = buf->data_ptr<float>();
      a.cap = buf->size(1); a.m = m.toInt();
      a.fill = fill->data_ptr<int64_t>();
      a.thr = thr->data_ptr<float>();
      a.nan = nan->data_ptr<int64_t>();
      a.negate = arg(s, n, 6).toBool();
      a.num_threads = nt;
      if (a.outer * a.inner == 0 || run_or_refuse([&a] { exact_quantile_update_cpu(a); })) {
        torch::jit::drop(*stack, n);
        return;
      }
    }
  }
  run_python_kernel("exact_quantile_update_", stack);
}

// quantile_sketch_update_(Tensor x, Tensor(a!) coarse, Tensor(b!) fine, Tensor(c!) top, Tensor(d!) zeros,
//                         Tensor(e!) nan, Tensor(f!) kmin, Tensor(g!) kmax, SymInt nb, str? backend,
//                         int? num_threads) -> ()
void quantile_sketch_kernel(const c10::OperatorHandle&, Stack* stack) {
  constexpr size_t n = 11;
  const Stack& s = *stack;
  const int nt = threads(arg(s, n, 10));
  auto x = values(arg(s, n, 0));
  const c10::IValue& nb = arg(s, n, 8);
  if (serves(arg(s, n, 9)) && nt >= 0 && x && nb.isInt() && nb.toInt() >= 1 && nb.toInt() < kSketchCoarse) {
    const int64_t K = x->size(1);
    auto coarse = cpu_tensor(arg(s, n, 1), 2, at::kLong);
    auto fine = cpu_tensor(arg(s, n, 2), 2, at::kLong);
    int64_t* vec[5] = {};  // top, zeros, nan, kmin, kmax: (K,) int64
    bool ok = coarse && fine && coarse->size(0) == K && coarse->size(1) == kSketchCoarse && fine->size(0) == K &&
              fine->size(1) == nb.toInt() * kSketchSub;
    for (size_t i = 0; ok && i < 5; ++i) {
      auto t = cpu_tensor(arg(s, n, 3 + i), 1, at::kLong);
      ok = t && t->size(0) == K;
      if (ok) vec[i] = t->data_ptr<int64_t>();
    }
    if (ok) {
      SketchArgs a;
      a.x = x->data_ptr();
      a.dtype = float_code(x->scalar_type());
      a.outer = x->size(0); a.K = K; a.inner = x->size(2);
      a.coarse = coarse->data_ptr<int64_t>();
      a.fine = fine->data_ptr<int64_t>();
      a.top = vec[0]; a.zeros = vec[1]; a.nan = vec[2]; a.kmin = vec[3]; a.kmax = vec[4];
      a.nb = nb.toInt();
      a.num_threads = nt;
      a.new_top = nullptr;
      if (a.outer * a.inner == 0 || run_or_refuse([&a] { quantile_sketch_update_cpu(a); })) {
        torch::jit::drop(*stack, n);
        return;
      }
    }
  }
  run_python_kernel("quantile_sketch_update_", stack);
}

}  // namespace
}  // namespace unitscope::torch_ops

TORCH_LIBRARY_IMPL(unitscope, CPU, m) {
  using namespace unitscope::torch_ops;
  m.impl("exact_quantile_update_", torch::CppFunction::makeFromBoxedFunction<&exact_quantile_kernel>());
  m.impl("quantile_sketch_update_", torch::CppFunction::makeFromBoxedFunction<&quantile_sketch_kernel>());
}
