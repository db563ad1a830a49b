// CUDA kernels of bsrops::dpcb's fused part (everything around the four cuDNN convolutions).
//
// Elementwise kernels are grid-stride loops over the per-element functions of dpcb.h, the
// functions the CPU kernels loop over (so the CPU tests check this maths). The gradient of a
// 1 x 1 condition is one block per (n, c) plane: each thread sums a strided share of the
// plane with grad_cond_scale_plane, then a fixed-shape tree in shared memory adds the shares:
// deterministic, no atomics. Only minimal headers (shared/DESIGN.md §5).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../call_counter.h"
#include "dpcb.h"

namespace bsrops {
namespace dpcb {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;

inline unsigned int num_blocks(int64_t total) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks)));
}

#define BSR_GRID_STRIDE(e, total)                                                          \
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < (total); \
       e += static_cast<int64_t>(blockDim.x) * gridDim.x)

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) leaky_relu_kernel(scalar_t* __restrict__ x, scalar_t slope, int64_t total) {
  BSR_GRID_STRIDE(e, total) x[e] = leaky_relu_element(x[e], slope);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    leaky_relu_backward_kernel(scalar_t* __restrict__ grad, const scalar_t* __restrict__ out, scalar_t slope,
                               int64_t total) {
  BSR_GRID_STRIDE(e, total) grad[e] = leaky_relu_grad_element(grad[e], out[e], slope);
}

// out_img over all elements; out_cond too when the condition is image-sized (hw_cond == hw),
// else f2 / x_cond hold one value per plane (hw_cond == 1).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ f1, const scalar_t* __restrict__ xc,
                    const scalar_t* __restrict__ f2, scalar_t* __restrict__ out, scalar_t* __restrict__ out_cond,
                    int64_t hw, bool pointwise, int64_t total) {
  BSR_GRID_STRIDE(e, total) {
    const int64_t c = pointwise ? e / hw : e;
    out[e] = modulate_element(x[e], f1[e], f2[c]);
    if (!pointwise || e % hw == 0) out_cond[c] = xc[c] + f2[c];
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_f1_kernel(const scalar_t* __restrict__ gi, const scalar_t* __restrict__ gc, const scalar_t* __restrict__ f1,
                   const scalar_t* __restrict__ f2, scalar_t* __restrict__ g1, scalar_t* __restrict__ g2, int64_t hw,
                   bool pointwise, int64_t total) {
  BSR_GRID_STRIDE(e, total) {
    const int64_t c = pointwise ? e / hw : e;
    g1[e] = gi ? gi[e] * f2[c] : scalar_t(0);
    if (!pointwise) g2[e] = (gc ? gc[e] : scalar_t(0)) + (gi ? gi[e] * f1[e] : scalar_t(0));
  }
}

// One block per plane: g2[p] = grad_cond[p] + sum over the plane of grad_img * f1.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_cond_plane_kernel(const scalar_t* __restrict__ gi, const scalar_t* __restrict__ gc,
                           const scalar_t* __restrict__ f1, scalar_t* __restrict__ g2, int64_t hw) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kThreads];
  const int64_t p = blockIdx.x, base = p * hw;
  partial[threadIdx.x] =
      gi ? grad_cond_scale_plane<scalar_t, acc_t>(gi, f1, base + threadIdx.x, base + hw, blockDim.x) : acc_t(0);
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) g2[p] = static_cast<scalar_t>(partial[0] + (gc ? static_cast<acc_t>(gc[p]) : acc_t(0)));
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "dpcb (cuda): ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "dpcb (cuda): ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

void leaky_relu_cuda(at::Tensor& x, double slope) {
  count_call("_leaky_relu_.cuda");
  check_cuda(x, "x");
  TORCH_CHECK(x.is_contiguous(), "_leaky_relu_: x must be contiguous");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  if (total == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "leaky_relu_cuda", [&] {
    leaky_relu_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(x.mutable_data_ptr<scalar_t>(),
                                                                            static_cast<scalar_t>(slope), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void leaky_relu_backward_cuda(at::Tensor& grad, const at::Tensor& out_in, double slope) {
  count_call("_leaky_relu_backward_.cuda");
  check_cuda(grad, "grad");
  TORCH_CHECK(grad.is_contiguous() && out_in.sizes() == grad.sizes() && out_in.scalar_type() == grad.scalar_type() &&
                  out_in.device() == grad.device(),
              "_leaky_relu_backward_: grad must be contiguous and out of its shape, dtype and device");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor out = out_in.contiguous();
  const int64_t total = grad.numel();
  if (total == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "leaky_relu_backward_cuda", [&] {
    leaky_relu_backward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        grad.mutable_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), static_cast<scalar_t>(slope), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> epilogue_cuda(const at::Tensor& x_in, const at::Tensor& f1_in,
                                                 const at::Tensor& xc_in, const at::Tensor& f2_in) {
  count_call("_dpcb_epilogue.cuda");
  check_cuda(x_in, "x_img");
  const bool pointwise = check_epilogue(x_in, f1_in, xc_in, f2_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), f1 = f1_in.contiguous(), xc = xc_in.contiguous(), f2 = f2_in.contiguous();
  at::Tensor out = at::empty_like(x), out_cond = at::empty_like(xc);
  const int64_t total = x.numel();
  if (total == 0) return {out, out_cond};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpcb_epilogue_cuda", [&] {
    epilogue_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), f1.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        f2.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), out_cond.mutable_data_ptr<scalar_t>(),
        x.size(2) * x.size(3), pointwise, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, out_cond};
}

std::tuple<at::Tensor, at::Tensor> epilogue_backward_cuda(const c10::optional<at::Tensor>& grad_img_in,
                                                          const c10::optional<at::Tensor>& grad_cond_in,
                                                          const at::Tensor& f1_in, const at::Tensor& f2_in) {
  count_call("_dpcb_epilogue_backward.cuda");
  check_cuda(f1_in, "f1");
  const bool pointwise = check_epilogue(f1_in, f1_in, f2_in, f2_in);
  const c10::cuda::CUDAGuard guard(f1_in.device());
  const at::Tensor f1 = f1_in.contiguous(), f2 = f2_in.contiguous();
  const bool has_gi = grad_img_in.has_value() && grad_img_in->defined();
  const bool has_gc = grad_cond_in.has_value() && grad_cond_in->defined();
  const at::Tensor gi = has_gi ? grad_img_in->contiguous() : at::Tensor();
  const at::Tensor gc = has_gc ? grad_cond_in->contiguous() : at::Tensor();
  TORCH_CHECK(!has_gi || gi.sizes() == f1.sizes(), "_dpcb_epilogue_backward: grad_img must be ", f1.sizes());
  TORCH_CHECK(!has_gc || gc.sizes() == f2.sizes(), "_dpcb_epilogue_backward: grad_cond must be ", f2.sizes());
  at::Tensor grad_f1 = at::empty_like(f1), grad_f2 = at::empty_like(f2);
  const int64_t total = f1.numel(), hw = f1.size(2) * f1.size(3), planes = f1.size(0) * f1.size(1);
  if (total == 0) return {grad_f1, grad_f2};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(f1.scalar_type(), "dpcb_epilogue_backward_cuda", [&] {
    const scalar_t* gid = has_gi ? gi.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gcd = has_gc ? gc.const_data_ptr<scalar_t>() : nullptr;
    grad_f1_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        gid, gcd, f1.const_data_ptr<scalar_t>(), f2.const_data_ptr<scalar_t>(), grad_f1.mutable_data_ptr<scalar_t>(),
        grad_f2.mutable_data_ptr<scalar_t>(), hw, pointwise, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (pointwise) {
      grad_cond_plane_kernel<scalar_t><<<static_cast<unsigned int>(planes), kThreads, 0, stream>>>(
          gid, gcd, f1.const_data_ptr<scalar_t>(), grad_f2.mutable_data_ptr<scalar_t>(), hw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_f1, grad_f2};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("_leaky_relu_", &leaky_relu_cuda);
  m.impl("_leaky_relu_backward_", &leaky_relu_backward_cuda);
  m.impl("_dpcb_epilogue", &epilogue_cuda);
  m.impl("_dpcb_epilogue_backward", &epilogue_backward_cuda);
}

}  // namespace dpcb
}  // namespace bsrops
