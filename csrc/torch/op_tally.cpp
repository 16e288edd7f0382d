// torch.ops.unitscope.tally_ on the CPU: the compiled IoU tally (csrc/cpu/tally.cpp) for the calls
// the cpp backend serves, the Python kernel for the rest.
#include <cmath>

#include "torch_ops.h"
#include "unitscope/tally.h"

namespace unitscope::torch_ops {

namespace {

// unitscope's code of a label dtype (python/unitscope/kernels/tally.py LABEL_CODE), -1 for others.
int label_code(at::ScalarType t) {
  switch (t) {
    case at::kByte: return kUInt8;
    case at::kShort: return kInt16;
    case at::kInt: return kInt32;
    case at::kLong: return kInt64;
    default: return -1;
  }
}

// An optional label tensor: ok and t undefined for None, ok and t for a contiguous CPU tensor of a
// label dtype and `dim` dimensions whose second size is at least 1.
bool labels(const c10::IValue& v, int64_t dim, at::Tensor* t) {
  if (v.isNone()) return true;
  auto l = cpu_tensor(v, dim, std::nullopt);
  if (!l || label_code(l->scalar_type()) < 0 || l->size(1) < 1) return false;
  *t = *l;
  return true;
}

// The arguments of a call the compiled tally serves, or nullopt.
std::optional<TallyArgs> tally_args(const Stack& s) {
  constexpr size_t n = 17;
  const int nt = threads(arg(s, n, 16));
  if (!serves(arg(s, n, 15)) || nt < 0) return std::nullopt;
  const c10::IValue &oh = arg(s, n, 10), &ow = arg(s, n, 11), &um = arg(s, n, 14);
  if (!oh.isInt() || !ow.isInt() || !um.isInt()) return std::nullopt;
  const int64_t Sh = oh.toInt(), Sw = ow.toInt(), union_mode = um.toInt();
  if (union_mode < 0 || union_mode > 2) return std::nullopt;
  auto A = cpu_tensor(arg(s, n, 0), 4, std::nullopt);
  auto inter = cpu_tensor(arg(s, n, 6), 2, at::kLong);
  auto act = cpu_tensor(arg(s, n, 7), 2, at::kLong);
  auto label = cpu_tensor(arg(s, n, 8), 1, at::kLong);
  auto total = cpu_tensor(arg(s, n, 9), 1, at::kLong);
  auto thr = cpu_tensor(arg(s, n, 1), 1, at::kFloat);
  auto category = cpu_tensor(arg(s, n, 5), 1, at::kLong);
  if (!A || !inter || !act || !label || !total || !thr || !category || float_code(A->scalar_type()) < 0) {
    return std::nullopt;
  }
  const int64_t B = A->size(0), K = A->size(1), h = A->size(2), w = A->size(3);
  const int64_t C = label->size(0), NC = act->size(1);
  if (inter->size(0) != K || inter->size(1) != C || act->size(0) != K || total->size(0) != K ||
      thr->size(0) != K || category->size(0) != C) {
    return std::nullopt;
  }
  const float* t = thr->data_ptr<float>();
  for (int64_t k = 0; k < K; ++k) {
    if (std::isnan(t[k])) return std::nullopt;  // the Python kernel names the unit
  }
  at::Tensor pix, img, ann;
  if (!labels(arg(s, n, 2), 4, &pix) || !labels(arg(s, n, 3), 2, &img)) return std::nullopt;
  if (pix.defined() && (pix.size(0) != B || pix.size(2) != Sh || pix.size(3) != Sw)) return std::nullopt;
  if (img.defined() && img.size(0) != B) return std::nullopt;
  if (!arg(s, n, 4).isNone()) {
    auto a = cpu_tensor(arg(s, n, 4), 2, at::kBool);
    if (!a || a->size(0) != B || a->size(1) != NC) return std::nullopt;
    ann = *a;
  }
  TallyArgs a;
  a.activations = A->data_ptr();
  a.thresholds = t;
  a.pixel_labels = pix.defined() ? pix.data_ptr() : nullptr;
  a.image_labels = img.defined() ? img.data_ptr() : nullptr;
  a.annotated = ann.defined() ? static_cast<const uint8_t*>(ann.data_ptr()) : nullptr;
  a.label_category = category->data_ptr<int64_t>();
  a.intersection = inter->data_ptr<int64_t>();
  a.activation = act->data_ptr<int64_t>();
  a.label = label->data_ptr<int64_t>();
  a.activation_total = total->data_ptr<int64_t>();
  a.workspace = nullptr;
  a.act_dtype = float_code(A->scalar_type());
  a.label_dtype = pix.defined() ? label_code(pix.scalar_type()) : 0;
  a.image_label_dtype = img.defined() ? label_code(img.scalar_type()) : 0;
  a.B = B; a.K = K; a.h = h; a.w = w; a.Sh = Sh; a.Sw = Sw;
  a.L = pix.defined() ? pix.size(1) : 0;
  a.L2 = img.defined() ? img.size(1) : 0;
  a.C = C; a.NC = NC;
  a.align_corners = arg(s, n, 12).toBool();
  a.ge = arg(s, n, 13).toBool();
  a.union_mode = static_cast<int>(union_mode);
  a.num_threads = nt;
  return a;
}

// tally_(Tensor activations, Tensor thresholds, Tensor? pixel_labels, Tensor? image_labels,
//        Tensor? annotated, Tensor label_category, Tensor(a!) intersection, Tensor(b!) activation,
//        Tensor(c!) label, Tensor(d!) activation_total, SymInt out_h, SymInt out_w, bool align_corners,
//        bool ge, int union_mode, str? backend, int? num_threads) -> ()
void tally_kernel(const c10::OperatorHandle&, Stack* stack) {
  // a label or category out of range makes the kernel raise in its first pass, before any count
  // changes; check_tally_sizes (unitscope/tally.h) refuses what it cannot index
  auto a = tally_args(*stack);
  if (a && run_or_refuse([&a] {
        check_tally_sizes(*a);
        if (a->B > 0) tally_cpu(*a);
      })) {
    torch::jit::drop(*stack, 17);
    return;
  }
  run_python_kernel("tally_", stack);
}

}  // namespace
}  // namespace unitscope::torch_ops

TORCH_LIBRARY_IMPL(unitscope, CPU, m) {
  m.impl("tally_", torch::CppFunction::makeFromBoxedFunction<&unitscope::torch_ops::tally_kernel>());
}
