// CUDA kernels of bsrops::blur_downsample.
//
// One thread per output element (grid-stride loop): each thread decodes its flat
// index and calls the per-element function of blur_downsample.h, the same function
// the CPU "cpu_shared" backend loops over, so the CPU tests check this maths.
// Gradients are gathers (no atomics), hence deterministic:
//   grad_x      : one thread per input pixel   -> grad_input_element
//   grad_kernel : one thread per (n, tap, cell) -> grad_kernel_element, where a cell is
//                 one output pixel for the per-pixel layout and the whole Ho x Wo image
//                 for the per-image layouts; the shared (k, k) kernel's gradient is the
//                 per-image gradient (in opmath dtype) summed over N.
// Only minimal headers are included (docs/ops.md): this file must compile
// against the CPU torch wheel for the nvcc compile check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../common/call_counter.h"
#include "../common/cuda_kernel.cuh"
#include "blur_downsample.h"

namespace bsrops {
namespace blur_downsample {
namespace {

// out[e], e = ((n * C + c) * Ho + i) * Wo + j
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ kernel, scalar_t* __restrict__ out,
                   const Geometry g, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  BSR_GRID_STRIDE(e, total) {
    const int64_t j = e % g.Wo, i = (e / g.Wo) % g.Ho, c = (e / (g.Wo * g.Ho)) % g.C, n = e / (g.Wo * g.Ho * g.C);
    out[e] = static_cast<scalar_t>(forward_element<scalar_t, acc_t>(x, kernel, g, n, c, i, j));
  }
}

// grad_x[e], e = ((n * C + c) * H + y) * W + x
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ kernel,
                      scalar_t* __restrict__ grad_x, const Geometry g, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  BSR_GRID_STRIDE(e, total) {
    const int64_t xc = e % g.W, y = (e / g.W) % g.H, c = (e / (g.W * g.H)) % g.C, n = e / (g.W * g.H * g.C);
    grad_x[e] = static_cast<scalar_t>(grad_input_element<scalar_t, acc_t>(grad_out, kernel, g, n, c, y, xc));
  }
}

// grad[e] in opmath dtype, e = (n * taps + t) * cells + cell
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_kernel_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                       at::opmath_type<scalar_t>* __restrict__ grad, const Geometry g, const bool per_pixel,
                       const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.k * g.k, cells = per_pixel ? g.Ho * g.Wo : 1;
  BSR_GRID_STRIDE(e, total) {
    const int64_t cell = e % cells, t = (e / cells) % taps, n = e / (cells * taps);
    const int64_t i0 = per_pixel ? cell / g.Wo : 0, j0 = per_pixel ? cell % g.Wo : 0;
    const int64_t i1 = per_pixel ? i0 + 1 : g.Ho, j1 = per_pixel ? j0 + 1 : g.Wo;
    grad[e] = grad_kernel_element<scalar_t, acc_t>(grad_out, x, g, n, t, i0, i1, j0, j1);
  }
}

void check_cuda_inputs(const at::Tensor& x, const at::Tensor& kernel) {
  TORCH_CHECK(x.is_cuda(), "blur_downsample (cuda): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(kernel.device() == x.device(), "blur_downsample (cuda): kernel must be on x's device ", x.device(),
              ", got ", kernel.device());
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                        c10::string_view padding, bool flip) {
  count_call("blur_downsample.cuda");
  check_cuda_inputs(x_in, kernel_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_cuda", [&] {
    launch_kernel(forward_kernel<scalar_t>, grid_blocks(total), x.const_data_ptr<scalar_t>(),
                  kernel.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, total);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                 const at::Tensor& kernel_in, int64_t stride,
                                                 c10::string_view padding, bool flip,
                                                 std::array<bool, 2> output_mask) {
  count_call("_blur_downsample_backward.cuda");
  check_cuda_inputs(x_in, kernel_in);
  TORCH_CHECK(grad_out_in.device() == x_in.device() && grad_out_in.scalar_type() == x_in.scalar_type(),
              "blur_downsample backward (cuda): grad_out must match x's device and dtype");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous(), grad_out = grad_out_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.N, g.C, g.Ho, g.Wo}),
              "blur_downsample backward: grad_out must be (N, C, Ho, Wo)");
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_kernel = kernel.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (output_mask[0] && grad_x.numel() > 0) {
      const int64_t total = grad_x.numel();
      launch_kernel(grad_input_kernel<scalar_t>, grid_blocks(total), grad_out.const_data_ptr<scalar_t>(),
                    kernel.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), g, total);
    }
    if (output_mask[1]) {
      const bool per_pixel = kernel.dim() == 4;
      const int64_t taps = g.k * g.k, cells = per_pixel ? g.Ho * g.Wo : 1;
      at::Tensor grad = at::empty({g.N, taps, cells}, x.options().dtype(at::toOpMathType(x.scalar_type())));
      const int64_t total = grad.numel();
      if (total > 0) {
        launch_kernel(grad_kernel_kernel<scalar_t>, grid_blocks(total), grad_out.const_data_ptr<scalar_t>(),
                      x.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<acc_t>(), g, per_pixel, total);
      }
      grad_kernel = kernel_grad_of(grad, kernel);
    }
  });
  return {grad_x, grad_kernel};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("blur_downsample", &forward_cuda);
  m.impl("_blur_downsample_backward", &backward_cuda);
}

}  // namespace blur_downsample
}  // namespace bsrops
