// Asks the CUDA runtime (linked statically) how many devices it sees, and why not when it sees none.
#include <cuda_runtime.h>

#include <string>

namespace unitscope {

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    *why = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (n == 0) *why = "no CUDA device found";
  return n;
}

}  // namespace unitscope
