// What the CUDA runtime linked into unitscope._C sees: how many devices, the error when it sees none,
// and the versions that tell "no GPU or no driver" apart from "a driver older than the toolkit".
#pragma once
#include <string>

namespace unitscope {

struct CudaProbe {
  int count = 0;             // devices cudaGetDeviceCount sees (0 on error)
  int error = 0;             // its cudaError_t, 0 on success
  std::string error_name;    // e.g. "cudaErrorNoDevice", "cudaErrorInsufficientDriver"; "" on success
  std::string error_string;  // cudaGetErrorString
  int driver_version = 0;    // cudaDriverGetVersion: the newest CUDA the driver supports (1000*major +
                             // 10*minor), 0 when no driver is installed
  int runtime_version = 0;   // cudaRuntimeGetVersion of the linked (static) runtime
  int toolkit_version = 0;   // CUDART_VERSION of the toolkit unitscope was compiled with
};

CudaProbe cuda_probe();

}  // namespace unitscope
