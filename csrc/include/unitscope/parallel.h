// CPU threading shared by csrc/cpu/*.cpp: how many threads a call may use, which one is running, and
// the bound on the scratch memory a call may take. Scratch is allocated before a parallel region
// (an exception thrown inside one would terminate the process), one slot per thread.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "unitscope/common.h"

namespace unitscope {

// num_threads above this is refused (libgomp exits the process on absurd counts); the Python layer
// refuses far less (unitscope/_backend.py: max(64, 4 x cores)).
constexpr int kMaxThreads = 4096;
// All threads' scratch buffers of one call together stay under this many bytes: fewer threads run
// when many would exceed it, and a call whose single thread would exceed it is refused.
constexpr int64_t kScratchBudget = int64_t(4) << 30;

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads for a call asking for `requested` (<= 0: one) with `work` independent tasks, each thread
// needing `per_thread` bytes of scratch; `what` names the op and its sizes for the error message.
inline int plan_threads(int requested, int64_t work, int64_t per_thread, const std::string& what) {
  check_arg(requested <= kMaxThreads, what + ": num_threads must be at most " + std::to_string(kMaxThreads) +
                                          ", got " + std::to_string(requested));
  check_arg(per_thread <= kScratchBudget,
            what + " needs " + std::to_string(per_thread >> 20) + " MiB of scratch memory per thread, more than the " +
                std::to_string(kScratchBudget >> 30) + " GiB a call may use; use a smaller out_size or smaller maps");
  const int64_t fits = kScratchBudget / std::max<int64_t>(per_thread, 1);
  return (int)std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(requested > 0 ? requested : 1, work), fits));
}

// Carries the first exception thrown inside a parallel region out of it: each thread wraps its work
// in run(), the caller calls rethrow() after the region.
class ErrorCarrier {
 public:
  template <class F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
#pragma omp critical(unitscope_error_carrier)
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::exception_ptr first_;
};

}  // namespace unitscope
