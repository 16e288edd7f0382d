// Binding for the Grad-CAM reduction: the Python layer has validated shapes and dtypes and passes
// raw pointers (as integers), sizes and flags.
#include <pybind11/pybind11.h>

#include "unitscope/common.h"
#include "unitscope/gradcam.h"

namespace py = pybind11;

namespace unitscope {

namespace {

GradcamArgs make_args(uintptr_t act, uintptr_t grad, uintptr_t weights, uintptr_t out, uintptr_t workspace,
                      int dtype, int64_t B, int64_t T, int64_t K, int64_t h, int64_t w, int64_t H,
                      int64_t W, bool relu, bool align_corners, bool normalize, int num_threads) {
  check_dtype_code(dtype, "activations");
  check_arg((grad != 0) != (weights != 0), "gradcam: exactly one of gradients and weights must be given");
  check_arg(B >= 0 && T >= 1 && K >= 1 && h >= 1 && w >= 1 && H >= 1 && W >= 1,
            "gradcam: sizes must be positive");
  check_arg(grad == 0 || T == 1, "gradcam: gradients give one target per image (T must be 1)");
  check_arg(B == 0 || (act != 0 && out != 0), "gradcam: activations and out must have data (a null pointer)");
  GradcamArgs a;
  a.activations = reinterpret_cast<const void*>(act);
  a.gradients = reinterpret_cast<const void*>(grad);
  a.weights = reinterpret_cast<const float*>(weights);
  a.out = reinterpret_cast<float*>(out);
  a.workspace = reinterpret_cast<float*>(workspace);
  a.act_dtype = dtype;
  a.B = B; a.T = T; a.K = K; a.h = h; a.w = w; a.H = H; a.W = W;
  a.relu = relu; a.align_corners = align_corners; a.normalize = normalize;
  a.num_threads = num_threads;
  return a;
}

}  // namespace

void register_gradcam(py::module_& m) {
  m.def("gradcam_cpu",
        [](uintptr_t act, uintptr_t grad, uintptr_t weights, uintptr_t out, int dtype, int64_t B,
           int64_t T, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W, bool relu,
           bool align_corners, bool normalize, int num_threads) {
          GradcamArgs a = make_args(act, grad, weights, out, 0, dtype, B, T, K, h, w, H, W, relu,
                                    align_corners, normalize, num_threads);
          py::gil_scoped_release release;
          gradcam_cpu(a);
        });
#ifdef UNITSCOPE_WITH_CUDA
  m.def("gradcam_cuda",
        [](uintptr_t act, uintptr_t grad, uintptr_t weights, uintptr_t out, uintptr_t workspace,
           int dtype, int64_t B, int64_t T, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
           bool relu, bool align_corners, bool normalize, int device, uintptr_t stream) {
          check_arg(workspace != 0, "gradcam_cuda: workspace must be given");
          GradcamArgs a = make_args(act, grad, weights, out, workspace, dtype, B, T, K, h, w, H, W,
                                    relu, align_corners, normalize, 0);
          py::gil_scoped_release release;
          gradcam_cuda(a, device, reinterpret_cast<void*>(stream));
        });
#endif
}

}  // namespace unitscope
