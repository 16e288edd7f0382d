// Binding for the streaming-quantile kernels: the Python layer has validated shapes and dtypes and
// owns every state buffer; it passes raw pointers (as integers) and sizes.
#include <pybind11/pybind11.h>

#include "unitscope/quantile.h"

namespace py = pybind11;

namespace unitscope {

namespace {

ExactQuantileArgs exact_args(uintptr_t x, int dtype, int64_t outer, int64_t K, int64_t inner, uintptr_t buf,
                             int64_t cap, int64_t m, uintptr_t fill, uintptr_t thr, uintptr_t nan, bool negate) {
  check_dtype_code(dtype, "x");
  check_arg(outer >= 0 && K >= 1 && inner >= 0, "exact_quantile: sizes must be non-negative, K >= 1");
  check_arg(m >= 1 && cap > m, "exact_quantile: need 1 <= m < cap");
  check_arg(buf && fill && thr && nan, "exact_quantile: state buffers must be given");
  check_arg(x != 0 || outer * inner == 0, "exact_quantile: x has no data (a null pointer)");
  ExactQuantileArgs a{};
  a.x = reinterpret_cast<const void*>(x);
  a.dtype = dtype; a.outer = outer; a.K = K; a.inner = inner;
  a.buf = reinterpret_cast<float*>(buf); a.cap = cap; a.m = m;
  a.fill = reinterpret_cast<int64_t*>(fill); a.thr = reinterpret_cast<float*>(thr);
  a.nan = reinterpret_cast<int64_t*>(nan); a.negate = negate;
  return a;
}

SketchArgs sketch_args(uintptr_t x, int dtype, int64_t outer, int64_t K, int64_t inner, uintptr_t coarse,
                       uintptr_t fine, uintptr_t top, uintptr_t zeros, uintptr_t nan, uintptr_t kmin,
                       uintptr_t kmax, int64_t nb) {
  check_dtype_code(dtype, "x");
  check_arg(outer >= 0 && K >= 1 && inner >= 0, "quantile_sketch: sizes must be non-negative, K >= 1");
  check_arg(nb >= 1 && nb < kSketchCoarse, "quantile_sketch: fine window must hold 1..511 coarse buckets");
  check_arg(coarse && fine && top && zeros && nan && kmin && kmax, "quantile_sketch: state buffers must be given");
  check_arg(x != 0 || outer * inner == 0, "quantile_sketch: x has no data (a null pointer)");
  SketchArgs a{};
  a.x = reinterpret_cast<const void*>(x);
  a.dtype = dtype; a.outer = outer; a.K = K; a.inner = inner;
  a.coarse = reinterpret_cast<int64_t*>(coarse); a.fine = reinterpret_cast<int64_t*>(fine);
  a.top = reinterpret_cast<int64_t*>(top); a.zeros = reinterpret_cast<int64_t*>(zeros);
  a.nan = reinterpret_cast<int64_t*>(nan); a.kmin = reinterpret_cast<int64_t*>(kmin);
  a.kmax = reinterpret_cast<int64_t*>(kmax); a.nb = nb;
  return a;
}

}  // namespace

void register_quantile(py::module_& m) {
  m.def("exact_quantile_update_cpu",
        [](uintptr_t x, int dtype, int64_t outer, int64_t K, int64_t inner, uintptr_t buf, int64_t cap, int64_t mm,
           uintptr_t fill, uintptr_t thr, uintptr_t nan, bool negate, int num_threads) {
          ExactQuantileArgs a = exact_args(x, dtype, outer, K, inner, buf, cap, mm, fill, thr, nan, negate);
          a.num_threads = num_threads;
          py::gil_scoped_release release;
          exact_quantile_update_cpu(a);
        });
  m.def("exact_quantile_select_cpu",
        [](uintptr_t buf, int64_t K, int64_t cap, uintptr_t fill, uintptr_t lo, uintptr_t hi, int num_threads) {
          check_arg(K >= 1 && cap >= 1, "exact_quantile_select: need K >= 1 and cap >= 1");
          check_arg(buf && fill && lo && hi, "exact_quantile_select: buffers must be given");
          py::gil_scoped_release release;
          exact_quantile_select_cpu(reinterpret_cast<float*>(buf), K, cap, reinterpret_cast<const int64_t*>(fill),
                                    reinterpret_cast<const int64_t*>(lo), reinterpret_cast<const int64_t*>(hi),
                                    num_threads);
        });
  m.def("exact_quantile_isa", &exact_quantile_isa, py::arg("limit") = -1,
        "The CPU update's filter: 0 portable, 1 AVX2, 2 AVX-512 (the best the CPU has, at most limit; "
        "limit >= 0 sets that limit for the process, for tests).");
  m.def("quantile_sketch_update_cpu",
        [](uintptr_t x, int dtype, int64_t outer, int64_t K, int64_t inner, uintptr_t coarse, uintptr_t fine,
           uintptr_t top, uintptr_t zeros, uintptr_t nan, uintptr_t kmin, uintptr_t kmax, int64_t nb,
           int num_threads) {
          SketchArgs a = sketch_args(x, dtype, outer, K, inner, coarse, fine, top, zeros, nan, kmin, kmax, nb);
          a.num_threads = num_threads;
          py::gil_scoped_release release;
          quantile_sketch_update_cpu(a);
        });
#ifdef UNITSCOPE_WITH_CUDA
  m.def("exact_quantile_update_cuda",
        [](uintptr_t x, int dtype, int64_t outer, int64_t K, int64_t inner, int64_t start, int64_t length,
           uintptr_t buf, int64_t cap, uintptr_t fill, uintptr_t thr, uintptr_t nan, bool negate, int device,
           uintptr_t stream) {
          ExactQuantileArgs a = exact_args(x, dtype, outer, K, inner, buf, cap, 1, fill, thr, nan, negate);
          check_arg(start >= 0 && length >= 0 && start + length <= outer * inner,
                    "exact_quantile_update_cuda: chunk out of range");
          a.start = start; a.length = length;
          py::gil_scoped_release release;
          exact_quantile_update_cuda(a, device, reinterpret_cast<void*>(stream));
        });
  m.def("quantile_sketch_update_cuda",
        [](uintptr_t x, int dtype, int64_t outer, int64_t K, int64_t inner, uintptr_t coarse, uintptr_t fine,
           uintptr_t top, uintptr_t zeros, uintptr_t nan, uintptr_t kmin, uintptr_t kmax, int64_t nb,
           uintptr_t new_top, int device, uintptr_t stream) {
          SketchArgs a = sketch_args(x, dtype, outer, K, inner, coarse, fine, top, zeros, nan, kmin, kmax, nb);
          check_arg(new_top != 0, "quantile_sketch_update_cuda: workspace must be given");
          a.new_top = reinterpret_cast<int64_t*>(new_top);
          py::gil_scoped_release release;
          quantile_sketch_update_cuda(a, device, reinterpret_cast<void*>(stream));
        });
#endif
}

}  // namespace unitscope
