// CUDA-only helpers: grid sizing for grid-stride loops, the launch-error check every wrapper runs, and
// the device guard every entry point opens first (select the tensors' device, restore the caller's).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace unitscope {

// Enough blocks to cover n items, at least one (so that an empty launch is still checked), capped
// because the kernels use grid-stride loops.
inline unsigned grid_size(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;
  return (unsigned)blocks;
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // a failed call also sets the last error: clear it so the next check is this call's own
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` the calling thread's current device for the guard's lifetime (the caller's stream
// belongs to it, and so do the buffers) and restores the previous one on exit, exceptions included.
// A stale error left by an earlier failed call is cleared first, so that check_launch reports this
// call's launches only (a sticky error, a corrupted context, is reported again by the first check).
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* what) {
    if (device < 0) throw std::invalid_argument(std::string(what) + ": device index must be >= 0, got " +
                                                std::to_string(device));
    check_cuda(cudaGetDevice(&previous_), what);
    if (device != previous_) check_cuda(cudaSetDevice(device), what);
    device_ = device;
    cudaGetLastError();
  }
  ~DeviceGuard() {
    if (device_ != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0, device_ = 0;
};

}  // namespace unitscope
