// Shared by the CPU and CUDA kernels: the host/device qualifier, non-fused float32 arithmetic,
// float16/bfloat16 decoding, and the argument checks that raise C++ exceptions (pybind11 turns
// std::invalid_argument into ValueError).
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define US_HD __host__ __device__ __forceinline__
#else
#define US_HD inline
#endif

namespace unitscope {

// Element types a kernel can read. The Python layer passes these codes.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// a*b and a+b each rounded to float32, never contracted into an FMA: the reference defines the
// result with separately rounded operations, and bitwise agreement (e.g. for pixels that sit exactly
// on a threshold) needs every backend to round the same way. Host code is also built with
// -ffp-contract=off; device code uses the _rn intrinsics, which nvcc never fuses.
US_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
US_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

US_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// IEEE binary16 -> float32, exact (normals, subnormals, inf, NaN).
US_HD float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: value = man * 2^-24, exact in float32
    const float v = (float)man * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// bfloat16 is the top half of a float32.
US_HD float bfloat16_to_float(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

// Read element i of a buffer of the given dtype as float32.
US_HD float load_float(const void* p, int64_t i, int dtype) {
  switch (dtype) {
    case kFloat16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case kBFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(p)[i]);
    case kFloat64: return (float)static_cast<const double*>(p)[i];
    default: return static_cast<const float*>(p)[i];
  }
}

inline void check_arg(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

inline void check_dtype_code(int dtype, const char* name) {
  check_arg(dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16 || dtype == kFloat64,
            std::string(name) + ": unsupported dtype code " + std::to_string(dtype));
}

}  // namespace unitscope
