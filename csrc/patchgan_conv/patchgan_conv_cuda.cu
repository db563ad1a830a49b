// CUDA kernels of bsrops::patchgan_conv's fused part (norm statistics + affine + LeakyReLU and
// their backward); the convolution itself runs on cuDNN in the op's composite.
//
// One block per group (instance: an (n, c) plane; batch: a channel over all n). Threads
// stride over the group's elements (Groups::offset), reduce in a fixed-shape shared-memory
// tree (deterministic, no atomics), and apply the per-element functions of
// patchgan_conv.h, the functions the CPU kernels loop over. The passes that write (out,
// grad_y) move 16-byte packs (cuda_vector.cuh) where H * W is whole packs and every
// operand is aligned to one, else value by value; the statistics' sums read value by value. Forward: sum -> mean, squared
// deviations -> rstd (two-pass), then out; backward: sum(gz), sum(gz * yhat) -> grad_y.
// float16 / bfloat16 tensors (y, out, grad_out, grad_y, the norm's weight and bias) are read and written in
// their own dtype; the arithmetic, the sums, mean / rstd and the running statistics are in
// at::opmath_type<scalar_t> (float32 for them; the dtype itself for float32 / float64).
// Only minimal headers (docs/ops.md).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "../common/call_counter.h"
#include "../common/cuda_kernel.cuh"
#include "../common/cuda_vector.cuh"
#include "patchgan_conv.h"

namespace bsrops {
namespace patchgan_conv {
namespace {

struct ForwardParams {
  Groups g;
  bool data_stats, training, tracked, activation;
  double momentum, eps, slope;
};

// out from y, element e of `group` for e in [0, M), in packs of V values (V = 1: value by value; V > 1 needs
// HW % V == 0 and y, out aligned to a pack, so each pack lies in one contiguous run of the group).
template <typename scalar_t, int V, typename acc_t, typename Offset>
__device__ void apply_norm_act(const scalar_t* __restrict__ y, scalar_t* __restrict__ out, int64_t first,
                               int64_t M, int64_t step, const Offset& offset, acc_t scale, acc_t shift, acc_t slope,
                               bool activation) {
  for (int64_t e = first * V; e < M; e += step * V) {
    const int64_t pack = offset(e) / V;
    Pack<scalar_t, V> v = load_pack<V>(y, pack);
    for (int q = 0; q < V; ++q) v.v[q] = norm_act_element<scalar_t, acc_t>(v.v[q], scale, shift, slope, activation);
    store_pack<V>(out, pack, v);
  }
}

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    norm_act_kernel(const scalar_t* __restrict__ y, scalar_t* __restrict__ out,
                    at::opmath_type<scalar_t>* __restrict__ mean, at::opmath_type<scalar_t>* __restrict__ rstd,
                    const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                    at::opmath_type<scalar_t>* __restrict__ running_mean,
                    at::opmath_type<scalar_t>* __restrict__ running_var, const ForwardParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const Groups& g = p.g;
  const int64_t group = blockIdx.x, M = g.norm == kNone ? g.N * g.C * g.HW : g.size();
  acc_t scale = 1, shift = 0;
  if (g.norm != kNone) {
    const int64_t c = g.channel(group);
    acc_t mu, r;
    if (p.data_stats) {
      acc_t sum = 0;
      for (int64_t e = threadIdx.x; e < M; e += kThreads) sum += static_cast<acc_t>(y[g.offset(group, e)]);
      mu = M > 0 ? block_sum(sum, shared) / M : acc_t(0);
      acc_t sq = 0;
      for (int64_t e = threadIdx.x; e < M; e += kThreads) {
        const acc_t d = static_cast<acc_t>(y[g.offset(group, e)]) - mu;
        sq += d * d;
      }
      sq = block_sum(sq, shared);
      r = acc_t(1) / sqrt((M > 0 ? sq / M : acc_t(0)) + static_cast<acc_t>(p.eps));
      if (threadIdx.x == 0 && g.norm == kBatch && p.training && p.tracked) {
        const acc_t m = static_cast<acc_t>(p.momentum);
        running_mean[c] = (1 - m) * running_mean[c] + m * mu;
        running_var[c] = (1 - m) * running_var[c] + m * sq / (M - 1);
      }
    } else {
      mu = running_mean[c];
      r = acc_t(1) / sqrt(running_var[c] + static_cast<acc_t>(p.eps));
    }
    if (threadIdx.x == 0) {
      mean[group] = mu;
      rstd[group] = r;
    }
    scale = (weight ? static_cast<acc_t>(weight[c]) : acc_t(1)) * r;
    shift = (bias ? static_cast<acc_t>(bias[c]) : acc_t(0)) - mu * scale;
  }
  const acc_t slope = static_cast<acc_t>(p.slope);
  if (g.norm == kNone) {  // no groups: a plain grid-stride loop over all elements
    apply_norm_act<scalar_t, V>(y, out, static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, M,
                                static_cast<int64_t>(gridDim.x) * kThreads, [](int64_t e) { return e; }, scale, shift,
                                slope, p.activation);
    return;
  }
  apply_norm_act<scalar_t, V>(y, out, threadIdx.x, M, kThreads, [&](int64_t e) { return g.offset(group, e); }, scale,
                              shift, slope, p.activation);
}

template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    norm_act_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ y,
                             const scalar_t* __restrict__ out, const at::opmath_type<scalar_t>* __restrict__ mean,
                             const at::opmath_type<scalar_t>* __restrict__ rstd, const scalar_t* __restrict__ weight,
                             scalar_t* __restrict__ grad_y, double* __restrict__ sums, const Groups g,
                             bool data_stats, double gz_slope) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const acc_t slope = static_cast<acc_t>(gz_slope);
  if (g.norm == kNone) {  // packs of V values over all elements
    const int64_t packs = g.N * g.C * g.HW / V;
    BSR_GRID_STRIDE(e, packs) {
      const Pack<scalar_t, V> gr = load_pack<V>(grad, e), o = load_pack<V>(out, e);
      Pack<scalar_t, V> r;
      for (int q = 0; q < V; ++q)
        r.v[q] = static_cast<scalar_t>(grad_z_element<acc_t>(gr.v[q], o.v[q], slope));
      store_pack<V>(grad_y, e, r);
    }
    return;
  }
  const int64_t group = blockIdx.x, M = g.size();
  const acc_t mu = mean[group], r = rstd[group];
  const acc_t gamma = weight ? static_cast<acc_t>(weight[g.channel(group)]) : acc_t(1);
  acc_t s1 = 0, s2 = 0;
  for (int64_t e = threadIdx.x; e < M; e += kThreads) {
    const int64_t o = g.offset(group, e);
    const acc_t gz = grad_z_element<acc_t>(grad[o], out[o], slope);
    s1 += gz;
    s2 += gz * ((static_cast<acc_t>(y[o]) - mu) * r);
  }
  s1 = block_sum(s1, shared);
  s2 = block_sum(s2, shared);
  if (threadIdx.x == 0) {
    sums[group] = s1;
    sums[gridDim.x + group] = s2;
  }
  if (!grad_y) return;
  const acc_t mean_gz = data_stats ? s1 / M : acc_t(0), mean_gz_yhat = data_stats ? s2 / M : acc_t(0);
  for (int64_t e = threadIdx.x * V; e < M; e += kThreads * V) {  // packs of V values in one contiguous run
    const int64_t pack = g.offset(group, e) / V;
    const Pack<scalar_t, V> gr = load_pack<V>(grad, pack), o = load_pack<V>(out, pack), yv = load_pack<V>(y, pack);
    Pack<scalar_t, V> result;
    for (int q = 0; q < V; ++q) {
      const acc_t gz = grad_z_element<acc_t>(gr.v[q], o.v[q], slope);
      const acc_t yhat = (static_cast<acc_t>(yv.v[q]) - mu) * r;
      result.v[q] =
          static_cast<scalar_t>(grad_y_element<acc_t>(gz, yhat, gamma * r, mean_gz, mean_gz_yhat, data_stats));
    }
    store_pack<V>(grad_y, pack, result);
  }
}

// These kernels take float16 / bfloat16 tensors (forward_setup / backward_setup check the dtypes for it).
constexpr bool kHalfKernels = true;

// A contiguous parameter of the setup (ForwardSetup / BackwardSetup), or null when absent.
template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_cuda(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    c10::string_view norm_name, bool training, double momentum, double eps, double slope, bool activation) {
  count_call("_patchgan_norm_act.cuda");
  TORCH_CHECK(y_in.is_cuda(), "patchgan_conv (cuda): y must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(y_in.device());
  const int norm = parse_norm(norm_name);
  const ForwardSetup f =
      forward_setup(y_in, weight, bias, running_mean, running_var, norm, training, momentum, eps, slope, kHalfKernels);
  const at::Tensor &y = f.y, &out = f.out, &mean = f.mean, &rstd = f.rstd;
  const Groups g = f.g;
  const bool tracked = f.tracked;
  ForwardParams p{g, f.data_stats, training, tracked, activation, momentum, eps, slope};
  const int64_t blocks = norm == kNone ? grid_blocks(y.numel()) : g.count();  // else one block per group
  if (blocks == 0) return {out, mean, rstd};
  BSR_DISPATCH_FLOAT_AND_HALF(y.scalar_type(), "patchgan_norm_act_cuda", [&] {
    using stat_t = at::opmath_type<scalar_t>;
    with_pack_size<scalar_t>(g.HW, {y.const_data_ptr(), out.const_data_ptr()}, [&](auto V) {
      launch_kernel(norm_act_kernel<scalar_t, decltype(V)::value>, blocks, y.const_data_ptr<scalar_t>(),
                    out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<stat_t>(), rstd.mutable_data_ptr<stat_t>(),
                    optional_ptr<scalar_t>(f.weight), optional_ptr<scalar_t>(f.bias),
                    tracked ? f.running_mean.mutable_data_ptr<stat_t>() : nullptr,
                    tracked ? f.running_var.mutable_data_ptr<stat_t>() : nullptr, p);
    });
  });
  finish_forward(f, running_mean, running_var);
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& y_in, const at::Tensor& out_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const c10::optional<at::Tensor>& weight, c10::string_view norm_name, bool training,
    double slope, bool activation, std::array<bool, 3> mask) {
  count_call("_patchgan_norm_act_backward.cuda");
  TORCH_CHECK(out_in.is_cuda() && grad_in.device() == out_in.device(),
              "patchgan_conv (cuda): grad_out and out must be CUDA tensors on one device");
  const c10::cuda::CUDAGuard guard(out_in.device());
  const int norm = parse_norm(norm_name);
  const BackwardSetup b =
      backward_setup(grad_in, y_in, out_in, mean_in, rstd_in, weight, norm, training, mask[0], kHalfKernels);
  const at::Tensor &grad = b.grad, &y = b.y, &out = b.out, &mean = b.mean, &rstd = b.rstd, &grad_y = b.grad_y;
  const at::Tensor& sums = b.sums;
  const Groups g = b.g;
  const int64_t groups = b.groups;
  const int64_t blocks = norm == kNone ? grid_blocks(out.numel()) : groups;  // else one block per group
  if (blocks > 0 && (mask[0] || norm != kNone)) {
    BSR_DISPATCH_FLOAT_AND_HALF(out.scalar_type(), "patchgan_norm_act_backward_cuda", [&] {
      using stat_t = at::opmath_type<scalar_t>;
      const void* written = mask[0] ? grad_y.const_data_ptr() : nullptr;
      with_pack_size<scalar_t>(g.HW, {grad.const_data_ptr(), y.const_data_ptr(), out.const_data_ptr(), written},
                               [&](auto V) {
        launch_kernel(norm_act_backward_kernel<scalar_t, decltype(V)::value>, blocks,
                      grad.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
                      mean.const_data_ptr<stat_t>(), rstd.const_data_ptr<stat_t>(),
                      optional_ptr<scalar_t>(b.weight), mask[0] ? grad_y.mutable_data_ptr<scalar_t>() : nullptr,
                      sums.mutable_data_ptr<double>(), g, b.data_stats, grad_z_slope(slope, activation));
      });
    });
  }
  const auto [grad_weight, grad_bias] = norm_param_grads(sums, g, norm, mask, out);  // in a fixed order
  return {grad_y, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("_patchgan_norm_act", &norm_act_cuda);
  m.impl("_patchgan_norm_act_backward", &norm_act_backward_cuda);
}

}  // namespace patchgan_conv
}  // namespace bsrops
