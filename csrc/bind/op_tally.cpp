// Binding for the IoU tally: the Python layer (kernels/tally.py) has validated shapes, dtypes and
// label ranges and passes raw pointers (as integers), sizes and flags.
#include <pybind11/pybind11.h>

#include "unitscope/common.h"
#include "unitscope/tally.h"
#include "unitscope/tally_bits.h"

namespace py = pybind11;

namespace unitscope {

namespace {

TallyArgs make_args(uintptr_t act, uintptr_t thr, uintptr_t pix, uintptr_t img, uintptr_t annotated,
                    uintptr_t label_category, uintptr_t inter, uintptr_t activation, uintptr_t label,
                    uintptr_t total, int act_dtype, int label_dtype, int image_label_dtype, int64_t B,
                    int64_t K, int64_t h, int64_t w, int64_t Sh, int64_t Sw, int64_t L, int64_t L2, int64_t C,
                    int64_t NC, bool align_corners, bool ge, int union_mode) {
  check_dtype_code(act_dtype, "activations");
  check_arg(union_mode >= 0 && union_mode <= 2,
            "tally: union_mode must be 0 (category), 1 (dataset) or 2 (mask), got " + std::to_string(union_mode));
  check_arg((pix != 0) == (L > 0), "tally: pixel_labels pointer and L disagree");
  check_arg((img != 0) == (L2 > 0), "tally: image_labels pointer and L2 disagree");
  check_arg(label_dtype >= kUInt8 && label_dtype <= kInt64, "pixel_labels: unsupported dtype code");
  check_arg(image_label_dtype >= kUInt8 && image_label_dtype <= kInt64, "image_labels: unsupported dtype code");
  check_arg(thr && label_category && inter && activation && label && total,
            "tally: thresholds, label_category and the count buffers must have data (a null pointer)");
  check_arg(B == 0 || act != 0, "tally: activations has no data (a null pointer)");
  TallyArgs a;
  a.activations = reinterpret_cast<const void*>(act);
  a.thresholds = reinterpret_cast<const float*>(thr);
  a.pixel_labels = reinterpret_cast<const void*>(pix);
  a.image_labels = reinterpret_cast<const void*>(img);
  a.annotated = reinterpret_cast<const uint8_t*>(annotated);
  a.label_category = reinterpret_cast<const int64_t*>(label_category);
  a.intersection = reinterpret_cast<int64_t*>(inter);
  a.activation = reinterpret_cast<int64_t*>(activation);
  a.label = reinterpret_cast<int64_t*>(label);
  a.activation_total = reinterpret_cast<int64_t*>(total);
  a.workspace = nullptr;
  a.act_dtype = act_dtype; a.label_dtype = label_dtype; a.image_label_dtype = image_label_dtype;
  a.B = B; a.K = K; a.h = h; a.w = w; a.Sh = Sh; a.Sw = Sw; a.L = L; a.L2 = L2; a.C = C; a.NC = NC;
  a.align_corners = align_corners; a.ge = ge; a.union_mode = union_mode;
  a.num_threads = 0;
  check_tally_sizes(a);
  return a;
}

}  // namespace

void register_tally(py::module_& m) {
  m.def("tally_cpu",
        [](uintptr_t act, uintptr_t thr, uintptr_t pix, uintptr_t img, uintptr_t annotated, uintptr_t label_category,
           uintptr_t inter, uintptr_t activation, uintptr_t label, uintptr_t total, int act_dtype, int label_dtype,
           int image_label_dtype, int64_t B, int64_t K, int64_t h, int64_t w, int64_t Sh, int64_t Sw, int64_t L,
           int64_t L2, int64_t C, int64_t NC, bool align_corners, bool ge, int union_mode, int num_threads) {
          TallyArgs a = make_args(act, thr, pix, img, annotated, label_category, inter, activation, label, total,
                                  act_dtype, label_dtype, image_label_dtype, B, K, h, w, Sh, Sw, L, L2, C, NC,
                                  align_corners, ge, union_mode);
          a.num_threads = num_threads;
          py::gil_scoped_release release;
          tally_cpu(a);
        });
  // the CUDA tally's algorithm run serially on the host (cpu/tally_bits_host.cpp), for tests only
  m.def("tally_bits_host",
        [](uintptr_t act, uintptr_t thr, uintptr_t pix, uintptr_t img, uintptr_t annotated, uintptr_t label_category,
           uintptr_t inter, uintptr_t activation, uintptr_t label, uintptr_t total, int act_dtype, int label_dtype,
           int image_label_dtype, int64_t B, int64_t K, int64_t h, int64_t w, int64_t Sh, int64_t Sw, int64_t L,
           int64_t L2, int64_t C, int64_t NC, bool align_corners, bool ge, int union_mode) {
          TallyArgs a = make_args(act, thr, pix, img, annotated, label_category, inter, activation, label, total,
                                  act_dtype, label_dtype, image_label_dtype, B, K, h, w, Sh, Sw, L, L2, C, NC,
                                  align_corners, ge, union_mode);
          py::gil_scoped_release release;
          tally_bits_host(a);
        });
#ifdef UNITSCOPE_WITH_CUDA
  m.def("tally_cuda_workspace_ints", &tally_cuda_workspace_ints);
  m.def("tally_cuda",
        [](uintptr_t act, uintptr_t thr, uintptr_t pix, uintptr_t img, uintptr_t annotated, uintptr_t label_category,
           uintptr_t inter, uintptr_t activation, uintptr_t label, uintptr_t total, uintptr_t workspace,
           int act_dtype, int label_dtype, int image_label_dtype, int64_t B, int64_t K, int64_t h, int64_t w,
           int64_t Sh, int64_t Sw, int64_t L, int64_t L2, int64_t C, int64_t NC, bool align_corners, bool ge,
           int union_mode, int device, uintptr_t stream) {
          check_arg(workspace != 0, "tally_cuda: workspace must be given");
          TallyArgs a = make_args(act, thr, pix, img, annotated, label_category, inter, activation, label, total,
                                  act_dtype, label_dtype, image_label_dtype, B, K, h, w, Sh, Sw, L, L2, C, NC,
                                  align_corners, ge, union_mode);
          a.workspace = reinterpret_cast<int32_t*>(workspace);
          py::gil_scoped_release release;
          tally_cuda(a, device, reinterpret_cast<void*>(stream));
        });
#endif
}

}  // namespace unitscope
