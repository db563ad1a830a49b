// CUDA kernels of bsrops::usrnet_solve and its backward.
//
// The FFTs are cuFFT's (torch.fft through ATen); between them, one thread per work item of
// usrnet_data_step.h (grid-stride loop) decodes its index and calls the same per-element
// function as the CPU kernels, so the CPU tests check this maths:
//   forward  : one thread per (n, c, LR frequency); representatives of a pair {w, -w} call
//              solve_element, in place on rfft2(z), then irfft2
//   backward : one thread per (n, LR frequency), solve_backward_element (sums the channels)
// Work items touch disjoint bins: no atomics, deterministic. alpha is checked in the kernels
// (device assertion) so that no host synchronisation is needed. The composite ops
// (precompute, data step and their backward) are ATen code shared with the CPU build.
// Only minimal headers are included (docs/ops.md).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/fft_irfft2.h>
#include <ATen/ops/fft_rfft2.h>
#include <ATen/ops/view_as_complex.h>
#include <ATen/ops/view_as_real.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>
#include <tuple>

#include "../common/call_counter.h"
#include "../common/cuda_kernel.cuh"
#include "usrnet_data_step.h"

namespace bsrops {
namespace usrnet_data_step {
namespace {

template <typename T>
__device__ inline void check_alpha(T a) {
  CUDA_KERNEL_ASSERT_MSG(a > T(0) && a == a && a - a == T(0), "usrnet_solve: alpha must be finite and > 0");
}

// e = ((n * C + c) * h + u) * w + v
template <typename T>
__global__ void __launch_bounds__(kThreads)
    solve_kernel(T* __restrict__ spectrum, const T* __restrict__ fb, const T* __restrict__ fbfy,
                 const T* __restrict__ f2b_mean, const T* __restrict__ alpha, const Geometry g, const int64_t total) {
  BSR_GRID_STRIDE(e, total) {
    const int64_t v = e % g.w, u = (e / g.w) % g.h, nc = e / (g.w * g.h);
    check_alpha(alpha[nc / g.C]);
    if (is_pair_representative(g, u, v)) solve_element(spectrum, fb, fbfy, f2b_mean, alpha, g, nc / g.C, nc % g.C, u, v);
  }
}

// e = (n * h + u) * w + v
template <typename T>
__global__ void __launch_bounds__(kThreads)
    solve_backward_kernel(const T* __restrict__ grad_half, const T* __restrict__ fz_half, const T* __restrict__ fb,
                          const T* __restrict__ fbfy, const T* __restrict__ f2b_mean, const T* __restrict__ alpha,
                          const Grads<T> out, const Geometry g, const int64_t total) {
  BSR_GRID_STRIDE(e, total) {
    const int64_t v = e % g.w, u = (e / g.w) % g.h, n = e / (g.w * g.h);
    check_alpha(alpha[n]);
    if (is_pair_representative(g, u, v))
      solve_backward_element(grad_half, fz_half, fb, fbfy, f2b_mean, alpha, out, g, n, u, v);
  }
}

void check_cuda_inputs(const char* op, const at::Tensor& z, std::initializer_list<at::Tensor> others) {
  TORCH_CHECK(z.is_cuda(), op, " (cuda): z must be a CUDA tensor, got ", z.device());
  for (const at::Tensor& t : others)
    TORCH_CHECK(t.device() == z.device(), op, " (cuda): every tensor must be on z's device ", z.device(), ", got ",
                t.device());
}

at::Tensor solve_cuda(const at::Tensor& z_in, const at::Tensor& fb_in, const at::Tensor& fbfy_in,
                      const at::Tensor& f2b_mean_in, const at::Tensor& alpha_in, int64_t scale) {
  count_call("usrnet_solve.cuda");
  const char* op = "usrnet_solve";
  check_cuda_inputs(op, z_in, {fb_in, fbfy_in, f2b_mean_in, alpha_in});
  const c10::cuda::CUDAGuard guard(z_in.device());
  const Geometry g = make_solve_geometry(op, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale);
  if (z_in.numel() == 0) return at::empty_like(z_in, at::MemoryFormat::Contiguous);
  const at::Tensor fb = fb_in.contiguous(), fbfy = fbfy_in.contiguous(), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  const int64_t total = g.N * g.C * g.h * g.w;
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_cuda", [&] {
    launch_kernel(solve_kernel<scalar_t>, grid_blocks(total), spectrum.mutable_data_ptr<scalar_t>(),
                  fb.const_data_ptr<scalar_t>(), fbfy.const_data_ptr<scalar_t>(), f2b_mean.const_data_ptr<scalar_t>(),
                  alpha.const_data_ptr<scalar_t>(), g, total);
  });
  return at::fft_irfft2(at::view_as_complex(spectrum), at::IntArrayRef({g.H, g.W}));
}

// output_mask: z, FB, FBFy, F2B_mean, alpha.
SolveGrads solve_backward_cuda(
    const at::Tensor& grad_x_in, const at::Tensor& z_in, const at::Tensor& fb_in, const at::Tensor& fbfy_in,
    const at::Tensor& f2b_mean_in, const at::Tensor& alpha_in, int64_t scale, std::array<bool, 5> output_mask) {
  count_call("_usrnet_solve_backward.cuda");
  const char* op = "usrnet_solve backward";
  check_cuda_inputs(op, z_in, {grad_x_in, fb_in, fbfy_in, f2b_mean_in, alpha_in});
  const c10::cuda::CUDAGuard guard(z_in.device());
  SolveGrads empty;
  const Geometry g = make_solve_backward_geometry(op, grad_x_in, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale,
                                                  output_mask, empty);
  if (z_in.numel() == 0) return empty;
  const auto& [want_z, want_fb, want_fbfy, want_w, want_alpha] = output_mask;
  const at::Tensor fb = fb_in.contiguous(), fbfy = fbfy_in.contiguous(), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor grad_spectrum = at::view_as_real(at::fft_rfft2(grad_x_in.contiguous()));
  const at::Tensor z_spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  at::Tensor grad_fb = wanted_like(want_fb, fb), grad_fbfy = wanted_like(want_fbfy, fbfy);
  at::Tensor grad_w = wanted_like(want_w, f2b_mean), alpha_partial = wanted_like(want_alpha, f2b_mean);
  const int64_t total = g.N * g.h * g.w;
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_backward_cuda", [&] {
    auto ptr = [](at::Tensor& t, bool want) { return want ? t.mutable_data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> out{ptr(grad_spectrum, want_z), ptr(grad_fbfy, want_fbfy), ptr(grad_fb, want_fb),
                              ptr(grad_w, want_w), ptr(alpha_partial, want_alpha)};
    launch_kernel(solve_backward_kernel<scalar_t>, grid_blocks(total), grad_spectrum.const_data_ptr<scalar_t>(),
                  z_spectrum.const_data_ptr<scalar_t>(), fb.const_data_ptr<scalar_t>(), fbfy.const_data_ptr<scalar_t>(),
                  f2b_mean.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(), out, g, total);
  });
  at::Tensor grad_z = want_z ? at::fft_irfft2(at::view_as_complex(grad_spectrum), at::IntArrayRef({g.H, g.W}))
                             : z_in.new_empty({0});
  at::Tensor grad_alpha = want_alpha ? alpha_partial.sum({1, 2}).view(alpha_in.sizes()) : alpha_in.new_empty({0});
  return {grad_z, grad_fb, grad_fbfy, grad_w, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("usrnet_solve", &solve_cuda);
  m.impl("_usrnet_solve_backward", &solve_backward_cuda);
  register_composites(m);
}

}  // namespace usrnet_data_step
}  // namespace bsrops
