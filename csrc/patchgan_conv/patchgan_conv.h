// Per-element maths of bsrops::patchgan_conv's fused part, shared by the CPU and CUDA kernels.
//
// PatchGAN block (shared/DESIGN.md §3): y = conv(x) + bias (oneDNN / cuDNN), then
//   z = gamma * (y - mean) * rstd + beta    (norm: instance -> per (n, c) plane, batch -> per channel)
//   out = lrelu(z) (or z when activation is off)
// A "group" is the set of elements one mean / rstd serves: plane n*C + c (instance) or
// channel c over all n (batch). Statistics accumulate in the op-math type (fp32 for fp32).
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

#include "../dpcb/dpcb.h"  // leaky_relu_element, leaky_relu_grad_element

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
  return static_cast<T>(activation ? dpcb::leaky_relu_element(z, slope) : z);
}

// The slope grad_z_element applies where out <= 0: the LeakyReLU's, or 1 without activation
// (one branch-free select on the sign either way).
C10_HOST_DEVICE inline double grad_z_slope(double negative_slope, bool activation) {
  return activation ? negative_slope : 1.0;
}

// d loss / d z from d loss / d out (the activation's mask from the sign of out).
template <typename T>
C10_HOST_DEVICE inline T grad_z_element(T grad_out, T out, T slope) {
  return dpcb::leaky_relu_grad_element(grad_out, out, slope);
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

// ---- host-side checks (CPU and CUDA entry points) ----
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <array>
#include <string_view>
#include <tuple>

namespace bsrops {
namespace patchgan_conv {

inline int parse_norm(std::string_view norm) {
  if (norm == "none") return kNone;
  if (norm == "instance") return kInstance;
  if (norm == "batch") return kBatch;
  TORCH_CHECK(false, "patchgan_conv: norm must be one of none, instance, batch; got '", std::string(norm), "'");
}

inline bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline Groups make_groups(const at::Tensor& y, int norm) {
  TORCH_CHECK(y.dim() == 4, "patchgan_conv: the conv output must be (N, C, H, W), got ", y.sizes());
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "patchgan_conv: float32 or float64 only, got ", y.scalar_type());
  return Groups{y.size(0), y.size(1), y.size(2) * y.size(3), norm};
}

inline void check_channel_vector(const c10::optional<at::Tensor>& t, const at::Tensor& y, const char* name) {
  if (!present(t)) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == y.size(1) && t->scalar_type() == y.scalar_type(), "patchgan_conv: ",
              name, " must be a (C,) = (", y.size(1), ",) tensor of dtype ", y.scalar_type(), ", got ", t->sizes(),
              " ", t->scalar_type());
}

// (grad norm_weight, grad norm_bias) from the per-group sums of the backward, rows
// (sum gz, sum gz * yhat): instance norm adds its N groups of each channel, batch norm's
// groups are the channels. Empty tensors where not asked for.
inline std::tuple<at::Tensor, at::Tensor> norm_param_grads(const at::Tensor& sums, const Groups& g, int norm,
                                                           std::array<bool, 3> mask, const at::Tensor& out) {
  at::Tensor grad_weight = out.new_empty({0}), grad_bias = out.new_empty({0});
  if (norm == kNone || !(mask[1] || mask[2])) return {grad_weight, grad_bias};
  const at::Tensor per_channel = norm == kInstance ? sums.view({2, g.N, g.C}).sum(1) : sums;
  if (mask[1]) grad_weight = per_channel[1].to(out.scalar_type());
  if (mask[2]) grad_bias = per_channel[0].to(out.scalar_type());
  return {grad_weight, grad_bias};
}

}  // namespace patchgan_conv
}  // namespace bsrops
