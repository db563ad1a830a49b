// CUDA kernels of bsrops::usrnet_solve and its backward.
//
// The FFTs are cuFFT's (torch.fft through ATen); between them the kernels work on half spectra
// (rfft2 layout). Each thread is one lane of usrnet_data_step.h (pair_lane: one lane per pair
// {w, -w} of LR frequencies, all but a few of them representatives) and calls the same
// per-element function as the CPU kernels of the cpu_shared backend, so the CPU tests check
// this maths:
//   forward  : lanes (n, c, pair), grid-stride; solve_element in place on rfft2(z), then irfft2
//   backward : a grid (lane blocks, image); solve_backward_element sums the channels, and the
//              same pass reduces grad_alpha per image (reduce_image_sum: a block tree sum, then
//              the partials of the image's blocks added in a fixed order by the last of them)
// Work items touch disjoint bins and every sum has a fixed order: deterministic, no float
// atomics. An FBFy of one complex value broadcast over every bin (USRNetDataTerm's zero FBFy) is
// read from that value (fbfy_operand). alpha is checked in the kernels (device assertion) so that no host
// synchronisation is needed. The composite ops (precompute, data step and their backward) are
// ATen code shared with the CPU build. Only minimal headers are included (docs/ops.md).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/fft_irfft2.h>
#include <ATen/ops/fft_rfft2.h>
#include <ATen/ops/view_as_complex.h>
#include <ATen/ops/view_as_real.h>
#include <ATen/ops/zeros.h>
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

constexpr int64_t kMaxImagesPerGrid = 65535;  // gridDim.y; a loop covers the images beyond

template <typename T>
__device__ inline void check_alpha(T a) {
  CUDA_KERNEL_ASSERT_MSG(a > T(0) && a == a && a - a == T(0), "usrnet_solve: alpha must be finite and > 0");
}

// e = (n * C + c) * pair_lanes + lane
template <typename T>
__global__ void __launch_bounds__(kThreads)
    solve_kernel(T* __restrict__ spectrum, const T* __restrict__ fb, const T* __restrict__ fbfy,
                 const T* __restrict__ f2b_mean, const T* __restrict__ alpha, const Geometry g, const int64_t total) {
  const int64_t lanes = pair_lanes(g);
  BSR_GRID_STRIDE(e, total) {
    const int64_t nc = e / lanes;
    int64_t u, v;
    check_alpha(alpha[nc / g.C]);
    if (pair_lane(g, e - nc * lanes, u, v))
      solve_element(spectrum, fb, fbfy, f2b_mean, alpha, g, nc / g.C, nc % g.C, u, v);
  }
}

// result[n] = the sum of `value` over every thread of the blocks (blockIdx.x, n), blockIdx.x < gridDim.x, in
// an order fixed whatever the blocks' timing: block_sum adds a block's values; with several blocks each
// stores its sum in partial[n, blockIdx.x] and takes a ticket from tickets[n] (zeros; integer atomics only),
// and the block with the last ticket adds the partials in index order. Every thread of the block calls it.
template <typename T>
__device__ void reduce_image_sum(T value, int64_t n, T* __restrict__ partial, int* __restrict__ tickets,
                                 T* __restrict__ result) {
  __shared__ T shared[kThreads];
  __shared__ bool last;
  const T block_total = block_sum(value, shared);
  if (gridDim.x == 1) {
    if (threadIdx.x == 0) result[n] = block_total;
    return;
  }
  T* image_partials = partial + n * gridDim.x;
  if (threadIdx.x == 0) {
    image_partials[blockIdx.x] = block_total;
    __threadfence();  // the partial is visible to every block before the ticket is
    last = atomicAdd(&tickets[n], 1) == static_cast<int>(gridDim.x) - 1;
  }
  __syncthreads();
  if (!last) return;
  T sum = 0;
  for (unsigned int b = threadIdx.x; b < gridDim.x; b += kThreads) sum += __ldcg(image_partials + b);  // from L2
  const T total = block_sum(sum, shared);
  if (threadIdx.x == 0) result[n] = total;
}

// grid (lane blocks, images): lane = blockIdx.x * kThreads + threadIdx.x of image n = blockIdx.y (+ gridDim.y ...)
template <typename T>
__global__ void __launch_bounds__(kThreads)
    solve_backward_kernel(const T* __restrict__ grad_half, const T* __restrict__ fz_half, const T* __restrict__ fb,
                          const T* __restrict__ fbfy, const T* __restrict__ f2b_mean, const T* __restrict__ alpha,
                          const Grads<T> out, T* __restrict__ alpha_partial, int* __restrict__ tickets,
                          T* __restrict__ grad_alpha, const Geometry g) {
  const int64_t lane = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    check_alpha(alpha[n]);
    int64_t u, v;
    T share = 0;
    if (lane < pair_lanes(g) && pair_lane(g, lane, u, v))
      share = solve_backward_element(grad_half, fz_half, fb, fbfy, f2b_mean, alpha, out, g, n, u, v);
    if (grad_alpha) reduce_image_sum(share, n, alpha_partial, tickets, grad_alpha);
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
  Geometry g = make_solve_geometry(op, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale);
  if (z_in.numel() == 0) return at::empty_like(z_in, at::MemoryFormat::Contiguous);
  const at::Tensor fb = fb_in.contiguous(), fbfy = fbfy_operand(fbfy_in, g), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  const int64_t total = g.N * g.C * pair_lanes(g);
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
  Geometry g = make_solve_backward_geometry(op, grad_x_in, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale,
                                            output_mask, empty);
  if (z_in.numel() == 0) return empty;
  const auto& [want_z, want_fb, want_fbfy, want_w, want_alpha] = output_mask;
  const at::Tensor fb = fb_in.contiguous(), fbfy = fbfy_operand(fbfy_in, g), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor grad_spectrum = at::view_as_real(at::fft_rfft2(grad_x_in.contiguous()));
  const at::Tensor z_spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  at::Tensor grad_fb = wanted_like(want_fb, fb), grad_fbfy = wanted_like(want_fbfy, fbfy);
  at::Tensor grad_w = wanted_like(want_w, f2b_mean);
  // grad_alpha (N,) in the kernel's pass; with several lane blocks per image, their partial sums and tickets
  const int64_t lane_blocks = (pair_lanes(g) + kThreads - 1) / kThreads;
  const bool several = want_alpha && lane_blocks > 1;
  at::Tensor grad_alpha = want_alpha ? at::empty({g.N}, alpha.options()) : alpha_in.new_empty({0});
  at::Tensor partial = several ? at::empty({g.N, lane_blocks}, alpha.options()) : alpha.new_empty({0});
  at::Tensor tickets = several ? at::zeros({g.N}, alpha.options().dtype(at::kInt)) : alpha.new_empty({0}, at::kInt);
  const dim3 grid(static_cast<unsigned int>(lane_blocks), static_cast<unsigned int>(std::min(g.N, kMaxImagesPerGrid)));
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_backward_cuda", [&] {
    auto ptr = [](at::Tensor& t, bool want) { return want ? t.mutable_data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> out{ptr(grad_spectrum, want_z), ptr(grad_fbfy, want_fbfy), ptr(grad_fb, want_fb),
                              ptr(grad_w, want_w), ptr(grad_alpha, want_alpha)};
    solve_backward_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad_spectrum.const_data_ptr<scalar_t>(), z_spectrum.const_data_ptr<scalar_t>(), fb.const_data_ptr<scalar_t>(),
        fbfy.const_data_ptr<scalar_t>(), f2b_mean.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(), out,
        ptr(partial, several), several ? tickets.mutable_data_ptr<int>() : nullptr,
        ptr(grad_alpha, want_alpha), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor grad_z = want_z ? at::fft_irfft2(at::view_as_complex(grad_spectrum), at::IntArrayRef({g.H, g.W}))
                             : z_in.new_empty({0});
  return {grad_z, grad_fb, grad_fbfy, grad_w, want_alpha ? grad_alpha.view(alpha_in.sizes()) : grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("usrnet_solve", &solve_cuda);
  m.impl("_usrnet_solve_backward", &solve_backward_cuda);
  register_composites(m);
}

}  // namespace usrnet_data_step
}  // namespace bsrops
