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
#include <vector>

#include "../common/call_counter.h"
#include "blur_downsample.h"

namespace bsrops {
namespace blur_downsample {
namespace {

// The CUDA forward_kernel's loop: one output pixel's channel group per iteration.
template <typename scalar_t, int K, int S, typename index_t>
void forward_groups(const scalar_t* x, const scalar_t* kernel, scalar_t* out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t C = g.C, Ho = g.Ho, Wo = g.Wo, groups = (C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, g.N * groups * g.Ho * g.Wo, 64, [&](int64_t begin, int64_t end) {
    for (index_t e = begin; e < end; ++e) {
      const index_t j = e % Wo, i = (e / Wo) % Ho, c0 = (e / (Wo * Ho)) % groups * kChannelBlock;
      const index_t n = e / (Wo * Ho * groups);
      const int count = static_cast<int>(std::min<index_t>(C - c0, kChannelBlock));
      acc_t acc[kChannelBlock];
      forward_channels<scalar_t, acc_t, K, S, index_t>(x, kernel, g, n, c0, count, i, j, acc);
      for (int q = 0; q < count; ++q) out[((n * C + c0 + q) * Ho + i) * Wo + j] = scalar_t(acc[q]);
    }
  });
}

// The CUDA forward_window_kernel's loop: one (plane, tile) per iteration, its weights and window loaded
// first, then its outputs.
template <typename scalar_t, int K, int S, typename index_t>
void forward_windows(const scalar_t* x, const scalar_t* kernel, scalar_t* out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int k = static_cast<int>(g.k), s = static_cast<int>(g.stride);
  const index_t side = window_side(k, s), tiles_w = (g.Wo + kTile - 1) / kTile;
  const index_t tiles = tiles_w * ((g.Ho + kTile - 1) / kTile), C = g.C, Ho = g.Ho, Wo = g.Wo;
  at::parallel_for(0, g.N * g.C * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(k * k);
    std::vector<scalar_t> window(side * side);
    for (index_t e = begin; e < end; ++e) {
      const index_t p = e / tiles, i0 = e % tiles / tiles_w * kTile, j0 = e % tiles % tiles_w * kTile;
      for (int t = 0; t < k * k; ++t) weights[t] = static_cast<acc_t>(window_weight<scalar_t, index_t>(kernel, g, p / C, t));
      for (index_t r = 0; r < side * side; ++r)
        window[r] = window_value<scalar_t, index_t>(x + p * g.H * g.W, g, i0, j0, side, r);
      for (int li = 0; li < kTile && i0 + li < Ho; ++li) {
        for (int lj = 0; lj < kTile && j0 + lj < Wo; ++lj) {
          out[(p * Ho + i0 + li) * Wo + j0 + lj] =
              scalar_t(window_output<scalar_t, acc_t, K, S>(window.data(), weights.data(), k, s, li, lj));
        }
      }
    }
  });
}

// As the CUDA forward: windows for per-image and shared kernels where they fit, else channel groups; the
// same (k, s) template parameters and index type (dispatch_forward).
template <typename scalar_t, int K, int S, typename index_t>
void run_forward(bool window, const at::Tensor& x, const at::Tensor& kernel, at::Tensor& out, const Geometry& g) {
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  const scalar_t* kd = kernel.const_data_ptr<scalar_t>();
  scalar_t* od = out.mutable_data_ptr<scalar_t>();
  if (window) {
    forward_windows<scalar_t, K, S, index_t>(xd, kd, od, g);
  } else {
    forward_groups<scalar_t, K, S, index_t>(xd, kd, od, g);
  }
}

at::Tensor forward_shared(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                          c10::string_view padding, bool flip) {
  count_call("_blur_downsample_shared.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_shared", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_forward<scalar_t, acc_t>(g, x, kernel, out, [&](auto K, auto S, auto index, bool window) {
      run_forward<scalar_t, decltype(K)::value, decltype(S)::value, decltype(index)>(window, x, kernel, out, g);
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
