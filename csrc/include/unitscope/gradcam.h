// Grad-CAM reduction: cam[b,t] = resize(relu(sum_k w[b,t,k] * A[b,k])), optionally min-max
// normalized per map. Declarations of the CPU and CUDA entry points and their argument block.
#pragma once
#include <cstdint>

namespace unitscope {

struct GradcamArgs {
  const void* activations;  // [B, K, h, w], dtype act_dtype, contiguous
  const void* gradients;    // [B, K, h, w], dtype act_dtype, or nullptr when weights are given
  const float* weights;     // [B, T, K] float32, or nullptr when gradients are given (then T = 1)
  float* out;               // [B, T, H, W] float32
  float* workspace;         // CUDA only: B*T*K + B*T*h*w + 2*B*T floats
  int act_dtype;
  int64_t B, T, K, h, w, H, W;
  bool relu, align_corners, normalize;
  int num_threads;          // CPU only; <= 0 means the OpenMP default
};

void gradcam_cpu(const GradcamArgs& a);
void gradcam_cuda(const GradcamArgs& a, int device, void* stream);  // stream: a cudaStream_t of `device`

}  // namespace unitscope
