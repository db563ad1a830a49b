// CPU kernels of bsrops::patchgan_conv's fused part: norm statistics + affine + LeakyReLU,
// and their backward. The convolution itself stays on oneDNN (called by the op's composite).
//
// Parallel over groups (instance: N*C planes; batch: C channels, each N planes). A group is
// at most a few hundred KB, so its passes after the first hit L1/L2:
//   forward : sum -> mean, sum of squared deviations -> rstd (two-pass: exact for any mean),
//             then out = lrelu(y * scale + shift) in one vectorised pass;
//   backward: gz (from grad_out and the sign of out) written into grad_y's memory, one pass
//             for sum(gz) and sum(gz * yhat) (yhat recomputed from y, mean, rstd: nothing but
//             y, out and the per-group statistics is saved), one pass turning gz into grad_y.
// Inner loops are contiguous runs of H*W elements over the per-element functions of
// patchgan_conv.h, vectorised with `omp simd` (float also compiled for AVX2 / AVX-512 and
// picked at load time, cpu_isa.h). Per-channel parameter gradients are summed
// from per-group partials in a fixed order: deterministic for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <tuple>

#include "../common/call_counter.h"
#include "../common/cpu_isa.h"
#include "../common/loop_pragmas.h"
#include "patchgan_conv.h"

namespace bsrops {
namespace patchgan_conv {
namespace {

// float32 / float64 kernels only: the composites run them on float32 copies of float16 / bfloat16 tensors.
constexpr bool kHalfKernels = false;

int64_t group_grain(const Groups& g) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, g.size())); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_cpu(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    c10::string_view norm_name, bool training, double momentum, double eps, double slope, bool activation) {
  count_call("_patchgan_norm_act.cpu");
  const int norm = parse_norm(norm_name);
  const ForwardSetup f =
      forward_setup(y_in, weight, bias, running_mean, running_var, norm, training, momentum, eps, slope, kHalfKernels);
  const at::Tensor &y = f.y, &out = f.out, &mean = f.mean, &rstd = f.rstd;
  const Groups g = f.g;
  const bool tracked = f.tracked, data_stats = f.data_stats;
  if (y.numel() == 0 && norm != kBatch) return {out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "patchgan_norm_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* yd = y.data_ptr<scalar_t>();
    scalar_t* od = out.data_ptr<scalar_t>();
    scalar_t *md = mean.data_ptr<scalar_t>(), *rd = rstd.data_ptr<scalar_t>();
    const scalar_t* wd = f.weight.defined() ? f.weight.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bd = f.bias.defined() ? f.bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* rmd = tracked ? f.running_mean.data_ptr<scalar_t>() : nullptr;
    scalar_t* rvd = tracked ? f.running_var.data_ptr<scalar_t>() : nullptr;
    const acc_t s = static_cast<acc_t>(slope);
    if (norm == kNone) {  // no groups: chunks of elements
      at::parallel_for(0, y.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
        with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
          BSR_SIMD
          for (int64_t e = begin; e < end; ++e) od[e] = norm_act_element<scalar_t, acc_t>(yd[e], 1, 0, s, activation);
        });
      });
      return;
    }
    const int64_t M = g.size();
    at::parallel_for(0, g.count(), group_grain(g), [&](int64_t g0, int64_t g1) {
      with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
      for (int64_t group = g0; group < g1; ++group) {
        acc_t scale = 1, shift = 0;
        const int64_t segments = g.segments(), length = g.HW;
        {
          const int64_t c = g.channel(group);
          acc_t mu, r;
          if (data_stats) {
            acc_t sum = 0;
            for (int64_t seg = 0; seg < segments; ++seg) {
              const scalar_t* p = yd + g.segment_offset(group, seg);
              BSR_SIMD_SUM(sum)
              for (int64_t e = 0; e < length; ++e) sum += static_cast<acc_t>(p[e]);
            }
            mu = M > 0 ? sum / M : acc_t(0);
            acc_t sq = 0;
            for (int64_t seg = 0; seg < segments; ++seg) {
              const scalar_t* p = yd + g.segment_offset(group, seg);
              BSR_SIMD_SUM(sq)
              for (int64_t e = 0; e < length; ++e) {
                const acc_t d = static_cast<acc_t>(p[e]) - mu;
                sq += d * d;
              }
            }
            const acc_t var = M > 0 ? sq / M : acc_t(0);
            r = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
            if (norm == kBatch && training && tracked) {  // as nn.BatchNorm2d: unbiased variance
              const acc_t m = static_cast<acc_t>(momentum);
              rmd[c] = static_cast<scalar_t>((1 - m) * rmd[c] + m * mu);
              rvd[c] = static_cast<scalar_t>((1 - m) * rvd[c] + m * sq / (M - 1));
            }
          } else {
            mu = static_cast<acc_t>(rmd[c]);
            r = acc_t(1) / std::sqrt(static_cast<acc_t>(rvd[c]) + static_cast<acc_t>(eps));
          }
          md[group] = static_cast<scalar_t>(mu);
          rd[group] = static_cast<scalar_t>(r);
          scale = (wd ? static_cast<acc_t>(wd[c]) : acc_t(1)) * r;
          shift = (bd ? static_cast<acc_t>(bd[c]) : acc_t(0)) - mu * scale;
        }
        for (int64_t seg = 0; seg < segments; ++seg) {
          const int64_t base = g.segment_offset(group, seg);
          const scalar_t* p = yd + base;
          scalar_t* q = od + base;
BSR_SIMD
          for (int64_t e = 0; e < length; ++e) q[e] = norm_act_element<scalar_t, acc_t>(p[e], scale, shift, s, activation);
        }
      }
      });
    });
  });
  finish_forward(f, running_mean, running_var);
  return {out, mean, rstd};
}

// The backward's loops over one contiguous run of n elements, each its own multi-ISA
// function (cpu_isa.h) called once per run, so that GCC vectorises it: inlined into the
// group loop's nest, it does not, and the LeakyReLU select becomes a data-dependent branch.

// gz = d loss / d z (into grad_y's memory or a scratch buffer), and s1 += sum(gz),
// s2 += sum(gz * yhat) with yhat = (y - mu) * r, in one pass
template <typename scalar_t, typename acc_t>
BSR_CLONES void grad_z_sums_run(const scalar_t* grad, const scalar_t* out, const scalar_t* y, scalar_t* gz, int64_t n,
                                scalar_t slope, acc_t mu, acc_t r, acc_t& s1, acc_t& s2) {
  acc_t a = 0, b = 0;
  BSR_SIMD_SUM(a, b)
  for (int64_t e = 0; e < n; ++e) {
    const scalar_t v = grad_z_element(grad[e], out[e], slope);
    gz[e] = v;
    a += static_cast<acc_t>(v);
    b += static_cast<acc_t>(v) * ((static_cast<acc_t>(y[e]) - mu) * r);
  }
  s1 += a;
  s2 += b;
}

// gz only (no norm: nothing to reduce)
template <typename scalar_t>
BSR_CLONES void grad_z_run(const scalar_t* grad, const scalar_t* out, scalar_t* gz, int64_t n, scalar_t slope) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) gz[e] = grad_z_element(grad[e], out[e], slope);
}

// gz -> grad_y in place
template <typename scalar_t, typename acc_t>
BSR_CLONES void grad_y_run(scalar_t* gz, const scalar_t* y, int64_t n, acc_t mu, acc_t r, acc_t gamma_r,
                           acc_t mean_gz, acc_t mean_gz_yhat, bool data_stats) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) {
    const acc_t yhat = (static_cast<acc_t>(y[e]) - mu) * r;
    gz[e] = static_cast<scalar_t>(
        grad_y_element<acc_t>(static_cast<acc_t>(gz[e]), yhat, gamma_r, mean_gz, mean_gz_yhat, data_stats));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& y_in, const at::Tensor& out_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const c10::optional<at::Tensor>& weight, c10::string_view norm_name, bool training,
    double slope, bool activation, std::array<bool, 3> mask) {
  count_call("_patchgan_norm_act_backward.cpu");
  const int norm = parse_norm(norm_name);
  const BackwardSetup b =
      backward_setup(grad_in, y_in, out_in, mean_in, rstd_in, weight, norm, training, mask[0], kHalfKernels);
  const at::Tensor &grad = b.grad, &y = b.y, &out = b.out, &mean = b.mean, &rstd = b.rstd, &grad_y = b.grad_y;
  const Groups g = b.g;
  const int64_t groups = b.groups;
  const bool data_stats = b.data_stats;
  // gz (d loss / d z) is written first to grad_y's memory and turned into grad_y in place
  const at::Tensor gz_buffer = mask[0] ? grad_y : at::empty_like(out);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "patchgan_norm_act_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *gd = grad.data_ptr<scalar_t>(), *yd = y.data_ptr<scalar_t>(), *od = out.data_ptr<scalar_t>();
    scalar_t* gyd = mask[0] ? grad_y.data_ptr<scalar_t>() : nullptr;
    scalar_t* gzd = gz_buffer.data_ptr<scalar_t>();
    const scalar_t gz_slope = static_cast<scalar_t>(grad_z_slope(slope, activation));
    if (norm == kNone) {
      if (!gyd) return;
      at::parallel_for(0, out.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
        grad_z_run(gd + begin, od + begin, gyd + begin, end - begin, gz_slope);
      });
      return;
    }
    const scalar_t *md = mean.data_ptr<scalar_t>(), *rd = rstd.data_ptr<scalar_t>();
    const scalar_t* wd = b.weight.defined() ? b.weight.data_ptr<scalar_t>() : nullptr;
    double* sum_gz = b.sums.data_ptr<double>();
    double* sum_gz_yhat = sum_gz + b.sums.size(1);
    const int64_t M = g.size();
    at::parallel_for(0, groups, group_grain(g), [&](int64_t g0, int64_t g1) {
      for (int64_t group = g0; group < g1; ++group) {
        const acc_t mu = static_cast<acc_t>(md[group]), r = static_cast<acc_t>(rd[group]);
        acc_t s1 = 0, s2 = 0;
        for (int64_t seg = 0; seg < g.segments(); ++seg) {
          const int64_t base = g.segment_offset(group, seg);
          grad_z_sums_run(gd + base, od + base, yd + base, gzd + base, g.HW, gz_slope, mu, r, s1, s2);
        }
        sum_gz[group] = s1;
        sum_gz_yhat[group] = s2;
        if (gyd) {
          const acc_t gamma_r = (wd ? static_cast<acc_t>(wd[g.channel(group)]) : acc_t(1)) * r;
          const acc_t mean_gz = data_stats ? s1 / M : acc_t(0), mean_gz_yhat = data_stats ? s2 / M : acc_t(0);
          for (int64_t seg = 0; seg < g.segments(); ++seg) {
            const int64_t base = g.segment_offset(group, seg);
            grad_y_run(gyd + base, yd + base, g.HW, mu, r, gamma_r, mean_gz, mean_gz_yhat, data_stats);
          }
        }
      }
    });
  });
  const auto [grad_weight, grad_bias] = norm_param_grads(b.sums, g, norm, mask, out);  // in a fixed order
  return {grad_y, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("_patchgan_norm_act", &norm_act_cpu);
  m.impl("_patchgan_norm_act_backward", &norm_act_backward_cpu);
}

}  // namespace patchgan_conv
}  // namespace bsrops
