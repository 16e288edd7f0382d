// Asks the CUDA runtime (linked statically) how many devices it sees, and with which driver and
// toolkit versions, so that the Python layer can say "no CUDA device" or "driver too old" (_backend.py).
#include <cuda_runtime.h>

#include "unitscope/cuda_probe.h"

namespace unitscope {

CudaProbe cuda_probe() {
  CudaProbe p;
  p.toolkit_version = CUDART_VERSION;
  // both succeed without a driver: the driver version is then 0
  if (cudaDriverGetVersion(&p.driver_version) != cudaSuccess) p.driver_version = 0;
  if (cudaRuntimeGetVersion(&p.runtime_version) != cudaSuccess) p.runtime_version = 0;
  const cudaError_t err = cudaGetDeviceCount(&p.count);
  if (err != cudaSuccess) {
    p.count = 0;
    p.error = static_cast<int>(err);
    p.error_name = cudaGetErrorName(err);
    p.error_string = cudaGetErrorString(err);
  }
  cudaGetLastError();  // leave no error behind for the first kernel's launch check
  return p;
}

}  // namespace unitscope
