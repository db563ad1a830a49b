// Per-element maths of bsrops::dpcb's fused kernels, shared by the CPU and CUDA kernels.
//
// DPCB (shared/DESIGN.md §3): f1 = conv(lrelu(conv(x_img))), f2 = conv(lrelu(conv(x_cond)));
//   out_img = x_img + f1 * f2   (f2 broadcast over H x W when it is 1 x 1)
//   out_cond = x_cond + f2
// The convolutions stay on oneDNN / cuDNN; these functions are everything around them.
// The CPU kernels loop over them (auto-vectorised), the CUDA kernels call them per thread,
// so the CPU tests check the GPU maths.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

// Vectorised loops on the CPU (OpenMP simd, also inside macro arguments); nothing for nvcc.
#if defined(_OPENMP) && !defined(__CUDACC__)
#define BSR_OMP_PRAGMA(x) _Pragma(#x)
#define BSR_SIMD BSR_OMP_PRAGMA(omp simd)
#define BSR_SIMD_SUM(...) BSR_OMP_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define BSR_SIMD
#define BSR_SIMD_SUM(...)
#endif

namespace bsrops {
namespace dpcb {

template <typename T>
C10_HOST_DEVICE inline T leaky_relu_element(T v, T slope) {
  return v > T(0) ? v : v * slope;
}

// d lrelu from its *output*: for slope >= 0 the output has the sign of the input, so the
// pre-activation need not be kept for the backward.
template <typename T>
C10_HOST_DEVICE inline T leaky_relu_grad_element(T grad, T out, T slope) {
  return out > T(0) ? grad : grad * slope;
}

template <typename T>
C10_HOST_DEVICE inline T modulate_element(T x, T f1, T f2) {
  return x + f1 * f2;
}

// sum over one plane of grad_img * f1: the gradient of a 1 x 1 f2 (before grad_cond is added).
template <typename T, typename acc_t>
C10_HOST_DEVICE inline acc_t grad_cond_scale_plane(const T* grad_img, const T* f1, int64_t begin, int64_t end,
                                                   int64_t step) {
  acc_t acc = 0;
  BSR_SIMD_SUM(acc)
  for (int64_t e = begin; e < end; e += step) acc += static_cast<acc_t>(grad_img[e]) * static_cast<acc_t>(f1[e]);
  return acc;
}

}  // namespace dpcb
}  // namespace bsrops

// ---- host-side shape checks (CPU and CUDA entry points) ----
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace bsrops {
namespace dpcb {

// f2 (and x_cond) is either (N, C, 1, 1) or image-sized; returns true for the 1 x 1 form.
inline bool check_epilogue(const at::Tensor& x_img, const at::Tensor& f1, const at::Tensor& x_cond,
                           const at::Tensor& f2) {
  TORCH_CHECK(x_img.dim() == 4 && f1.sizes() == x_img.sizes(), "dpcb: x_img and f1 must be (N, C, H, W) alike, got ",
              x_img.sizes(), " and ", f1.sizes());
  TORCH_CHECK(x_cond.sizes() == f2.sizes(), "dpcb: x_cond and f2 must have one shape, got ", x_cond.sizes(), " and ",
              f2.sizes());
  const bool pointwise = f2.dim() == 4 && f2.size(0) == x_img.size(0) && f2.size(1) == x_img.size(1) &&
                         f2.size(2) == 1 && f2.size(3) == 1;
  TORCH_CHECK(pointwise || f2.sizes() == x_img.sizes(), "dpcb: the condition must be (N, C, 1, 1) or (N, C, H, W) = ",
              x_img.sizes(), ", got ", f2.sizes());
  TORCH_CHECK(f1.scalar_type() == x_img.scalar_type() && f2.scalar_type() == x_img.scalar_type() &&
                  x_cond.scalar_type() == x_img.scalar_type(),
              "dpcb: all tensors must have one dtype");
  return pointwise && !(x_img.size(2) == 1 && x_img.size(3) == 1);
}

}  // namespace dpcb
}  // namespace bsrops
