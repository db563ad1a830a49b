// Per-element maths of bsrops::dpcb's fused kernels, shared by the CPU and CUDA kernels.
//
// DPCB (docs/ops.md): f1 = conv(lrelu(conv(x_img))), f2 = conv(lrelu(conv(x_cond)));
//   out_img = x_img + f1 * f2   (f2 broadcast over H x W when it is 1 x 1)
//   out_cond = x_cond + f2
// The convolutions stay on oneDNN / cuDNN; these functions are everything around them.
// The CPU kernels loop over them (auto-vectorised), the CUDA kernels call them per thread,
// so the CPU tests check the GPU maths.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

#include "../common/leaky_relu.h"    // leaky_relu_element, leaky_relu_grad_element
#include "../common/loop_pragmas.h"  // BSR_SIMD_SUM

namespace bsrops {
namespace dpcb {

template <typename T>
C10_HOST_DEVICE inline T modulate_element(T x, T f1, T f2) {
  return x + f1 * f2;
}

// A dense 4-D tensor seen as (N, C, P = H * W): NCHW has strides (C * P, P, 1), channels_last
// (P * C, 1, C); a (N, C, 1, 1) condition broadcast over an image has pixel stride 0. The
// op runs its convolutions in channels_last and takes x_img / gradients in the caller's
// layout, so every fused kernel reads and writes each tensor through its own strides.
// Index is int64_t, or int32_t in the CUDA kernels over tensors whose offsets fit it.
template <typename Index>
struct PlaneStridesOf {
  using index_t = Index;
  Index n, c, p;
};
using PlaneStrides = PlaneStridesOf<int64_t>;

template <typename Index>
C10_HOST_DEVICE inline Index offset_of(const PlaneStridesOf<Index>& s, typename PlaneStridesOf<Index>::index_t n,
                                       typename PlaneStridesOf<Index>::index_t c,
                                       typename PlaneStridesOf<Index>::index_t p) {
  return n * s.n + c * s.c + p * s.p;
}

// sum of grad_img * f1 over pixels [begin, end) step `step` of one (n, c) plane, each read
// with its own pixel stride: the gradient of a 1 x 1 f2 (before grad_cond is added).
template <typename T, typename acc_t>
C10_HOST_DEVICE inline acc_t grad_cond_scale_plane(const T* grad_img, int64_t grad_step, const T* f1,
                                                   int64_t f1_step, int64_t begin, int64_t end, int64_t step) {
  acc_t acc = 0;
  BSR_SIMD_SUM(acc)
  for (int64_t e = begin; e < end; e += step)
    acc += static_cast<acc_t>(grad_img[e * grad_step]) * static_cast<acc_t>(f1[e * f1_step]);
  return acc;
}

}  // namespace dpcb
}  // namespace bsrops

// ---- host-side shape checks (CPU and CUDA entry points) ----
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../common/optional_tensor.h"

namespace bsrops {
namespace dpcb {

// f2 (and x_cond) is either (N, C, 1, 1) or image-sized; returns true for the 1 x 1 form.
inline bool check_condition(const at::Tensor& image, const at::Tensor& cond, const char* image_name,
                            const char* cond_name) {
  TORCH_CHECK(image.dim() == 4, "dpcb: ", image_name, " must be (N, C, H, W), got ", image.sizes());
  const bool pointwise = cond.dim() == 4 && cond.size(0) == image.size(0) && cond.size(1) == image.size(1) &&
                         cond.size(2) == 1 && cond.size(3) == 1;
  TORCH_CHECK(pointwise || cond.sizes() == image.sizes(), "dpcb: the condition must be (N, C, 1, 1) or (N, C, H, W) = ",
              image.sizes(), ", got ", cond_name, " of shape ", cond.sizes());
  TORCH_CHECK(cond.scalar_type() == image.scalar_type(), "dpcb: ", cond_name, " must have ", image_name, "'s dtype");
  return pointwise && !(image.size(2) == 1 && image.size(3) == 1);
}

inline bool check_epilogue(const at::Tensor& x_img, const at::Tensor& f1, const at::Tensor& x_cond,
                           const at::Tensor& f2) {
  TORCH_CHECK(x_img.dim() == 4 && f1.sizes() == x_img.sizes(), "dpcb: x_img and f1 must be (N, C, H, W) alike, got ",
              x_img.sizes(), " and ", f1.sizes());
  TORCH_CHECK(x_cond.sizes() == f2.sizes(), "dpcb: x_cond and f2 must have one shape, got ", x_cond.sizes(), " and ",
              f2.sizes());
  TORCH_CHECK(f1.scalar_type() == x_img.scalar_type(), "dpcb: all tensors must have one dtype");
  check_condition(x_img, x_cond, "x_img", "x_cond");
  return check_condition(x_img, f2, "x_img", "f2");
}

// The epilogue backward's operands (f1, f2 optional: which gradients are wanted); returns true
// for a 1 x 1 condition.
inline bool check_epilogue_backward(const at::Tensor& grad_img, const at::Tensor& grad_cond,
                                    const c10::optional<at::Tensor>& f1, const c10::optional<at::Tensor>& f2) {
  const bool pointwise = check_condition(grad_img, grad_cond, "grad_img", "grad_cond");
  TORCH_CHECK(!present(f1) || (f1->sizes() == grad_img.sizes() && f1->scalar_type() == grad_img.scalar_type()),
              "_dpcb_epilogue_backward: f1 must have grad_img's shape ", grad_img.sizes(), " and dtype");
  TORCH_CHECK(!present(f2) || (f2->sizes() == grad_cond.sizes() && f2->scalar_type() == grad_img.scalar_type()),
              "_dpcb_epilogue_backward: f2 must have grad_cond's shape ", grad_cond.sizes(), " and dtype");
  return pointwise;
}

inline void check_relayout(const at::Tensor& x, const c10::optional<at::Tensor>& other) {
  TORCH_CHECK(x.dim() == 4, "_relayout: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(!present(other) || (other->sizes() == x.sizes() && other->scalar_type() == x.scalar_type()),
              "_relayout: other must have x's shape ", x.sizes(), " and dtype");
}

// NCHW or channels_last, else a contiguous copy (the kernels read every tensor through its strides).
inline at::Tensor dense(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast) ? t : t.contiguous();
}

// The strides of a dense tensor as (N, C, P); `broadcast`: a (N, C, 1, 1) tensor read for every pixel.
inline PlaneStrides plane_strides(const at::Tensor& t, bool broadcast = false) {
  const int64_t channels = t.size(1), pixels = t.size(2) * t.size(3);
  if (broadcast) return {channels, 1, 0};
  if (t.is_contiguous()) return {channels * pixels, pixels, 1};
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), "dpcb: expected an NCHW or channels_last tensor");
  return {pixels * channels, 1, channels};
}

inline at::MemoryFormat layout(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// grad and out of the in-place LeakyReLU backward: one shape, dtype and memory order (flat loops).
inline at::Tensor same_order(const at::Tensor& out, const at::Tensor& grad) {
  TORCH_CHECK(out.sizes() == grad.sizes() && out.scalar_type() == grad.scalar_type() && out.device() == grad.device(),
              "_leaky_relu_backward_: out must have grad's shape, dtype and device, got ", out.sizes(), " and ",
              grad.sizes());
  TORCH_CHECK(grad.is_non_overlapping_and_dense(), "_leaky_relu_backward_: grad must be dense (NCHW or channels_last)");
  if (out.strides() == grad.strides()) return out;
  return out.contiguous(grad.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
}

}  // namespace dpcb
}  // namespace bsrops
