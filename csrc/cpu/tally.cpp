// The IoU tally on the CPU, never building an upsampled map (the two phases: tally_body.h).
// Phase 1 (OpenMP over images) reads each image's label maps once: it checks every label's range,
// counts labels (once per pixel) and the categories present, and cuts each output row into 64-pixel
// words, listing per word each label present with the bit mask of its pixels; an out-of-range label
// throws before any counter changes. Phase 2 (OpenMP over blocks of units: a thread owns whole rows
// of the counters) skips each (image, unit) whose map cannot pass the threshold (tally.h:
// value_bound), bounds each output row and its columns the same way, evaluates the remaining pixels
// 4 or 8 at a time into words of mask bits, and adds popcount(mask & label bits) for each label
// entry of each nonzero word. The body is compiled twice, for any x86-64 CPU and for AVX2 + POPCNT,
// and the second runs where the CPU has both (no global -march flag: the module runs anywhere).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "unitscope/bilinear.h"
#include "unitscope/parallel.h"
#include "unitscope/tally.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define US_TALLY_DISPATCH 1
#else
#define US_TALLY_DISPATCH 0
#endif

namespace unitscope {

namespace {

// One image's L * S_h * S_w label cells are indexed with int32 below; tally_cpu refuses more.
constexpr int64_t kMaxLabelCells = int64_t(1) << 31;

namespace generic {
#define US_TALLY_AVX2 0
#include "tally_body.h"
#undef US_TALLY_AVX2
}  // namespace generic

#if US_TALLY_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
namespace avx2 {
#define US_TALLY_AVX2 1
#include "tally_body.h"
#undef US_TALLY_AVX2
}  // namespace avx2
#pragma GCC pop_options
#endif

}  // namespace

void tally_cpu(const TallyArgs& a) {
  const int threads = plan_threads(a.num_threads, kMaxThreads, 0, "tally (cpp)");
  check_arg(a.L < kMaxLabelCells && a.Sh * a.Sw < kMaxLabelCells && a.L * a.Sh * a.Sw < kMaxLabelCells,
            "tally (cpp): one image's pixel labels must have L * S_h * S_w < 2^31 cells (the label word "
            "tables index them with int32), got L = " + std::to_string(a.L) + ", S_h = " + std::to_string(a.Sh) +
                ", S_w = " + std::to_string(a.Sw) + "; use fewer label maps, a smaller out_size, or the numba backend");
  check_arg(a.union_mode >= 0 && a.union_mode <= 2,
            "tally (cpp): union_mode must be 0, 1 or 2, got " + std::to_string(a.union_mode));
  for (int64_t c = 1; c < a.C; ++c)
    check_arg(a.label_category[c] >= 0 && a.label_category[c] < a.NC,
              "label_category must hold categories in [0, num_categories), got " +
                  std::to_string(a.label_category[c]) + " for label " + std::to_string(c));
  // UNITSCOPE_TALLY_ISA=generic runs the copy for any CPU here too (tests compare the two copies)
  const char* isa = std::getenv("UNITSCOPE_TALLY_ISA");
  const std::string want = isa ? isa : "";
  check_arg(want.empty() || want == "auto" || want == "generic",
            "the environment variable UNITSCOPE_TALLY_ISA must be auto or generic (or unset), got '" + want + "'");
#if US_TALLY_DISPATCH
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  if (has_avx2 && want != "generic") return avx2::tally_all(a, threads);
#endif
  generic::tally_all(a, threads);
}

}  // namespace unitscope
