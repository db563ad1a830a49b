// Per-element maths of bsrops::patchgan_conv's fused part, shared by the CPU and CUDA kernels.
//
// PatchGAN block (docs/ops.md): y = conv(x) + bias (oneDNN / cuDNN), then
//   z = gamma * (y - mean) * rstd + beta    (norm: instance -> per (n, c) plane, batch -> per channel)
//   out = lrelu(z) (or z when activation is off)
// A "group" is the set of elements one mean / rstd serves: plane n*C + c (instance) or
// channel c over all n (batch). Statistics accumulate in the op-math type (fp32 for fp32 and, in
// the CUDA kernels, for fp16 / bf16), which is also the dtype of mean, rstd and the running statistics.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

#include "../common/leaky_relu.h"

namespace bsrops {
namespace patchgan_conv {

enum Norm : int { kNone = 0, kInstance = 1, kBatch = 2 };

struct Groups {
  int64_t N, C, HW;
  int norm;
  C10_HOST_DEVICE int64_t count() const { return norm == kBatch ? C : N * C; }
  C10_HOST_DEVICE int64_t size() const { return norm == kBatch ? N * HW : HW; }
  // contiguous runs of HW elements that make up a group: N for batch norm, 1 for instance norm
  C10_HOST_DEVICE int64_t segments() const { return norm == kBatch ? N : 1; }
  C10_HOST_DEVICE int64_t segment_offset(int64_t group, int64_t segment) const {
    return norm == kBatch ? (segment * C + group) * HW : group * HW;
  }
  C10_HOST_DEVICE int64_t channel(int64_t group) const { return norm == kBatch ? group : group % C; }
  // element e (0 <= e < size()) of a group
  C10_HOST_DEVICE int64_t offset(int64_t group, int64_t e) const {
    return segment_offset(group, e / HW) + e % HW;
  }
};

// out from y with the group's scale = gamma * rstd and shift = beta - mean * scale.
template <typename T, typename acc_t>
C10_HOST_DEVICE inline T norm_act_element(T y, acc_t scale, acc_t shift, acc_t slope, bool activation) {
  const acc_t z = static_cast<acc_t>(y) * scale + shift;
  return static_cast<T>(activation ? leaky_relu_element(z, slope) : z);
}

// The slope grad_z_element applies where out <= 0: the LeakyReLU's, or 1 without activation
// (one branch-free select on the sign either way).
C10_HOST_DEVICE inline double grad_z_slope(double negative_slope, bool activation) {
  return activation ? negative_slope : 1.0;
}

// d loss / d z from d loss / d out (the activation's mask from the sign of out).
template <typename T>
C10_HOST_DEVICE inline T grad_z_element(T grad_out, T out, T slope) {
  return leaky_relu_grad_element(grad_out, out, slope);
}

// d loss / d y. With batch statistics (training / instance norm), mean and rstd depend on y:
//   grad_y = gamma * rstd * (gz - mean(gz) - yhat * mean(gz * yhat));
// with fixed statistics (batch norm in eval mode) grad_y = gamma * rstd * gz.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t grad_y_element(acc_t gz, acc_t yhat, acc_t gamma_rstd, acc_t mean_gz,
                                            acc_t mean_gz_yhat, bool batch_stats) {
  return batch_stats ? gamma_rstd * (gz - mean_gz - yhat * mean_gz_yhat) : gamma_rstd * gz;
}

}  // namespace patchgan_conv
}  // namespace bsrops

// ---- host side (CPU and CUDA entry points): checks, allocation, parameter gradients ----
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <algorithm>
#include <array>
#include <cmath>
#include <string_view>
#include <tuple>
#include <vector>

#include "../common/optional_tensor.h"

namespace bsrops {
namespace patchgan_conv {

inline int parse_norm(std::string_view norm) {
  if (norm == "none") return kNone;
  if (norm == "instance") return kInstance;
  if (norm == "batch") return kBatch;
  TORCH_CHECK(false, "patchgan_conv: norm must be one of none, instance, batch; got '", std::string(norm), "'");
}

// The groups of y (N, C, H, W) in float32 / float64, or also float16 / bfloat16 for kernels that take them
// (`half_kernels`: the CUDA ones).
inline Groups make_groups(const at::Tensor& y, int norm, bool half_kernels) {
  TORCH_CHECK(y.dim() == 4, "patchgan_conv: the conv output must be (N, C, H, W), got ", y.sizes());
  const at::ScalarType dtype = y.scalar_type();
  const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || (half_kernels && half), "patchgan_conv: ",
              half_kernels ? "float16, bfloat16, float32 or float64" : "float32 or float64", " only, got ", dtype);
  return Groups{y.size(0), y.size(1), y.size(2) * y.size(3), norm};
}

// The dtype of mean, rstd and the running statistics for y: the op-math type of y's (float32 for float16 /
// bfloat16), in which the kernels accumulate.
inline at::ScalarType stats_dtype(const at::Tensor& y) { return at::toOpMathType(y.scalar_type()); }

// t absent, or a (C,) tensor of `dtype` on y's device.
inline void check_channel_vector(const c10::optional<at::Tensor>& t, const at::Tensor& y, at::ScalarType dtype,
                                 const char* name) {
  if (!present(t)) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == y.size(1) && t->scalar_type() == dtype, "patchgan_conv: ", name,
              " must be a (C,) = (", y.size(1), ",) tensor of dtype ", dtype, ", got ", t->sizes(), " ",
              t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == y.device(), "patchgan_conv: ", name, " is on ", t->device(), " but the input is on ",
                    y.device());
}

// A (C,) parameter as the kernels read it: contiguous (they index it as a plain array; a strided, expanded or
// offset view is copied), undefined when absent.
inline at::Tensor channel_vector(const c10::optional<at::Tensor>& t) {
  return present(t) ? t->contiguous() : at::Tensor();
}

// The scalar arguments: NaN fails every comparison, so each check is written to fail on it.
inline void check_scalars(double momentum, double eps, double slope) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "patchgan_conv: eps must be a finite float >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(momentum), "patchgan_conv: momentum must be a finite float, got ", momentum);
  TORCH_CHECK_VALUE(std::isfinite(slope) && slope >= 0, "patchgan_conv: negative_slope must be a finite float >= 0, got ",
                    slope);
}

// The forward's checked inputs and allocated outputs, the same on every device: y, the norm's
// weight / bias and the running statistics contiguous (copies of strided, expanded or offset
// views; `finish_forward` writes updated copies back into the caller's buffers), its groups,
// whether running statistics are tracked (read in eval, updated in training) and whether the
// statistics come from the data; out and the per-group mean / rstd (in stats_dtype, as the running
// statistics must be; the weight and bias in y's dtype).
struct ForwardSetup {
  at::Tensor y, out, mean, rstd;
  at::Tensor weight, bias, running_mean, running_var;  // what the kernels read (undefined when absent)
  Groups g;
  bool tracked, data_stats, updates;
};

inline ForwardSetup forward_setup(const at::Tensor& y_in, const c10::optional<at::Tensor>& weight,
                                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& running_mean,
                                  const c10::optional<at::Tensor>& running_var, int norm, bool training,
                                  double momentum, double eps, double slope, bool half_kernels) {
  ForwardSetup f;
  f.y = y_in.contiguous();
  f.g = make_groups(f.y, norm, half_kernels);
  check_channel_vector(weight, f.y, f.y.scalar_type(), "norm_weight");
  check_channel_vector(bias, f.y, f.y.scalar_type(), "norm_bias");
  check_channel_vector(running_mean, f.y, stats_dtype(f.y), "running_mean");
  check_channel_vector(running_var, f.y, stats_dtype(f.y), "running_var");
  check_scalars(momentum, eps, slope);
  f.tracked = present(running_mean) && present(running_var);
  TORCH_CHECK(present(running_mean) == present(running_var),
              "patchgan_conv: give both running_mean and running_var or neither");
  f.data_stats = norm == kInstance || (norm == kBatch && (training || !f.tracked));
  f.updates = norm == kBatch && training && f.tracked;
  if (f.updates) {  // updated in place: one memory location per channel, as nn.BatchNorm2d needs
    for (const auto& [t, name] : {std::pair{&running_mean, "running_mean"}, std::pair{&running_var, "running_var"}})
      TORCH_CHECK_VALUE((*t)->size(0) <= 1 || (*t)->stride(0) != 0, "patchgan_conv: ", name,
                        " is updated in place in training mode and must not be an expanded tensor (stride 0: every "
                        "channel one memory location), got strides ", (*t)->strides());
  }
  f.weight = channel_vector(weight);
  f.bias = channel_vector(bias);
  f.running_mean = f.tracked ? running_mean->contiguous() : at::Tensor();
  f.running_var = f.tracked ? running_var->contiguous() : at::Tensor();
  TORCH_CHECK(!(norm == kBatch && f.data_stats && f.g.size() <= 1 && training),
              "patchgan_conv: batch norm in training mode needs more than one value per channel, got ", f.y.sizes());
  f.out = at::empty_like(f.y);
  const auto stat_shape = norm == kInstance ? std::vector<int64_t>{f.g.N, f.g.C}
                                            : std::vector<int64_t>{norm == kBatch ? f.g.C : 0};
  f.mean = at::empty(stat_shape, f.y.options().dtype(stats_dtype(f.y)));
  f.rstd = at::empty(stat_shape, f.y.options().dtype(stats_dtype(f.y)));
  return f;
}

// After the forward kernel: running statistics updated in contiguous copies go back into the caller's buffers.
inline void finish_forward(const ForwardSetup& f, const c10::optional<at::Tensor>& running_mean,
                           const c10::optional<at::Tensor>& running_var) {
  if (!f.updates) return;
  if (!f.running_mean.is_same(*running_mean)) running_mean->copy_(f.running_mean);
  if (!f.running_var.is_same(*running_var)) running_var->copy_(f.running_var);
}

// The backward's checked inputs and outputs: grad_out, y (out itself without a norm), out,
// mean, rstd (in stats_dtype) contiguous; grad_y (empty when not asked for); `sums` (2, groups) in
// float64 for the per-group sum(gz) and sum(gz * yhat) that norm_param_grads turns into parameter grads.
struct BackwardSetup {
  at::Tensor grad, y, out, mean, rstd, weight, grad_y, sums;  // weight: the norm's, contiguous (undefined if absent)
  Groups g;
  int64_t groups;
  bool data_stats;
};

inline BackwardSetup backward_setup(const at::Tensor& grad_in, const at::Tensor& y_in, const at::Tensor& out_in,
                                    const at::Tensor& mean_in, const at::Tensor& rstd_in,
                                    const c10::optional<at::Tensor>& weight, int norm, bool training,
                                    bool want_grad_y, bool half_kernels) {
  BackwardSetup b;
  b.grad = grad_in.contiguous();
  b.out = out_in.contiguous();
  b.y = norm == kNone ? b.out : y_in.contiguous();
  b.g = make_groups(b.out, norm, half_kernels);
  TORCH_CHECK(b.grad.sizes() == b.out.sizes() && b.y.sizes() == b.out.sizes(),
              "_patchgan_norm_act_backward: grad_out, y and out must have one shape");
  check_channel_vector(weight, b.out, b.out.scalar_type(), "norm_weight");
  b.weight = channel_vector(weight);
  b.mean = mean_in.contiguous();
  b.rstd = rstd_in.contiguous();
  b.groups = norm == kNone ? 0 : b.g.count();
  TORCH_CHECK(b.mean.numel() == b.groups && b.rstd.numel() == b.groups,
              "_patchgan_norm_act_backward: mean and rstd must hold ", b.groups, " values");
  const at::ScalarType stats = stats_dtype(b.out);
  TORCH_CHECK(b.mean.scalar_type() == stats && b.rstd.scalar_type() == stats,
              "_patchgan_norm_act_backward: mean and rstd must be ", stats, " for ", b.out.scalar_type(),
              " tensors, got ", b.mean.scalar_type(), " and ", b.rstd.scalar_type());
  b.data_stats = norm == kInstance || (norm == kBatch && training);
  b.grad_y = want_grad_y ? at::empty_like(b.out) : b.out.new_empty({0});
  b.sums = at::empty({2, std::max<int64_t>(b.groups, 1)}, b.out.options().dtype(at::kDouble));
  return b;
}

// (grad norm_weight, grad norm_bias) from the per-group sums of the backward, rows
// (sum gz, sum gz * yhat): instance norm adds its N groups of each channel, batch norm's
// groups are the channels. In stats_dtype (float32 for float16 / bfloat16: no second rounding
// of a float32 parameter's gradient); empty tensors where not asked for.
inline std::tuple<at::Tensor, at::Tensor> norm_param_grads(const at::Tensor& sums, const Groups& g, int norm,
                                                           std::array<bool, 3> mask, const at::Tensor& out) {
  at::Tensor grad_weight = out.new_empty({0}), grad_bias = out.new_empty({0});
  if (norm == kNone || !(mask[1] || mask[2])) return {grad_weight, grad_bias};
  const at::Tensor per_channel = norm == kInstance ? sums.view({2, g.N, g.C}).sum(1) : sums;
  if (mask[1]) grad_weight = per_channel[1].to(stats_dtype(out));
  if (mask[2]) grad_bias = per_channel[0].to(stats_dtype(out));
  return {grad_weight, grad_bias};
}

}  // namespace patchgan_conv
}  // namespace bsrops
