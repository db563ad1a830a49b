// The "cpu_shared" backend of bsrops::blur_downsample: the per-element functions of
// blur_downsample.h, which are what the CUDA kernels run, looped on the CPU (one output
// pixel's channel group, input pixel or kernel tap per iteration, as the CUDA threads), so
// that the CPU tests check the GPU maths.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "../common/call_counter.h"
#include "blur_downsample.h"

namespace bsrops {
namespace blur_downsample {
namespace {

at::Tensor forward_shared(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                          c10::string_view padding, bool flip) {
  count_call("_blur_downsample_shared.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_shared", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xd = x.data_ptr<scalar_t>();
    const scalar_t* kd = kernel.data_ptr<scalar_t>();
    scalar_t* od = out.data_ptr<scalar_t>();
    const int64_t groups = (g.C + kChannelBlock - 1) / kChannelBlock;  // as the CUDA forward: channel groups
    at::parallel_for(0, g.N * groups * g.Ho * g.Wo, 64, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t j = e % g.Wo, i = (e / g.Wo) % g.Ho, c0 = (e / (g.Wo * g.Ho)) % groups * kChannelBlock;
        const int64_t n = e / (g.Wo * g.Ho * groups);
        const int count = static_cast<int>(std::min<int64_t>(g.C - c0, kChannelBlock));
        acc_t acc[kChannelBlock];
        forward_channels<scalar_t, acc_t>(xd, kd, g, n, c0, count, i, j, acc);
        for (int q = 0; q < count; ++q) od[((n * g.C + c0 + q) * g.Ho + i) * g.Wo + j] = scalar_t(acc[q]);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_shared(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                   const at::Tensor& kernel_in, int64_t stride,
                                                   c10::string_view padding, bool flip,
                                                   std::array<bool, 2> output_mask) {
  count_call("_blur_downsample_shared_backward.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous(), grad_out = grad_out_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_kernel = kernel.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_backward_shared", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gd = grad_out.data_ptr<scalar_t>();
    const scalar_t* kd = kernel.data_ptr<scalar_t>();
    const scalar_t* xd = x.data_ptr<scalar_t>();
    if (output_mask[0]) {
      scalar_t* gx = grad_x.data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), 64, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t xc = e % g.W, y = (e / g.W) % g.H, c = (e / (g.W * g.H)) % g.C, n = e / (g.W * g.H * g.C);
          gx[e] = scalar_t(grad_input_element<scalar_t, acc_t>(gd, kd, g, n, c, y, xc));
        }
      });
    }
    if (output_mask[1]) {
      const bool per_pixel = kernel.dim() == 4;
      const int64_t taps = g.k * g.k, cells = per_pixel ? g.Ho * g.Wo : 1;
      at::Tensor grad = at::empty({g.N, taps, cells}, x.options().dtype(at::toOpMathType(x.scalar_type())));
      acc_t* gk = grad.data_ptr<acc_t>();
      at::parallel_for(0, grad.numel(), 16, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t cell = e % cells, t = (e / cells) % taps, n = e / (cells * taps);
          const int64_t i0 = per_pixel ? cell / g.Wo : 0, j0 = per_pixel ? cell % g.Wo : 0;
          const int64_t i1 = per_pixel ? i0 + 1 : g.Ho, j1 = per_pixel ? j0 + 1 : g.Wo;
          gk[e] = grad_kernel_element<scalar_t, acc_t>(gd, xd, g, n, t, i0, i1, j0, j1);
        }
      });
      grad_kernel = kernel_grad_of(grad, kernel);
    }
  });
  return {grad_x, grad_kernel};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("_blur_downsample_shared", &forward_shared);
  m.impl("_blur_downsample_shared_backward", &backward_shared);
}

}  // namespace blur_downsample
}  // namespace bsrops
