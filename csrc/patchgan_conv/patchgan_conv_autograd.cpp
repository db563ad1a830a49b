// bsrops::_patchgan_conv2d and bsrops::patchgan_norm_act (the two autograd nodes of
// patchgan_conv) on the native backends: their kernels for CPU and CUDA (aten's conv2d; the fused
// norm kernel on the norm dtype) and their autograd formulas for the Autograd key (C++ nodes).
//
// The ops, their order and their dtypes are those of the Python formulas in
// bsrops/ops/patchgan_conv.py (`_conv2d_composite`, `_conv2d_backward`, `_norm_act_composite`,
// `_backward`), which remain the kernels without _C and under the Python backends: both give the
// same results, bit for bit. The fused ops go through the dispatcher (a Python kernel installed
// over a native one still runs); the half-precision rule is conv_block.h's, and norm_dtype below
// is patchgan_conv.py's.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "../common/conv_block.h"

namespace bsrops {
namespace patchgan_conv {
namespace {

using namespace conv_block;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using NormActOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

constexpr const char* kOp = "patchgan_conv";

// ---- the convolution node ----

Tensor conv2d_kernel(const Tensor& x, const Tensor& weight, const OptTensor& bias, int64_t stride, int64_t padding) {
  return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

const auto& conv2d_op() {
  static auto op = typed_op<Tensor(const Tensor&, const Tensor&, const OptTensor&, int64_t, int64_t)>(
      "bsrops::_patchgan_conv2d");
  return op;
}

// conv2d's backward in channels_last when grad_y is (the norm's backward hands it so): x is moved for it
// and dropped before grad_x goes back to x's layout
struct Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                        int64_t stride, int64_t padding) {
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = conv2d_op().call(x, weight, bias, stride, padding);
    }
    ctx->save_for_backward({x, weight});
    ctx->saved_data["present"] = present_arguments(x, weight, bias);
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &grad_y = grads[0];
    auto needs = needs_by_argument<3>(ctx, ctx->saved_data["present"].toInt());
    variable_list result(5);
    if (!grad_y.defined() || !(needs[0] || needs[1] || needs[2])) return result;
    Tensor grad_x, grad_weight, grad_bias;
    {
      Tensor x_conv = is_channels_last(grad_y) ? to_channels_last(x) : x;
      std::tie(grad_x, grad_weight, grad_bias) = conv_backward(
          grad_y, x_conv, weight, ctx->saved_data["stride"].toInt(), ctx->saved_data["padding"].toInt(), needs);
    }
    if (needs[0] && is_channels_last(grad_x) != is_channels_last(x)) {
      grad_x = relayout(grad_x, Tensor(), is_channels_last(x));
    }
    std::array<Tensor, 3> input_grads{grad_x, grad_weight, grad_bias};
    for (size_t i = 0; i < 3; ++i) {
      if (needs[i]) result[i] = input_grads[i];
    }
    return result;
  }
};

Tensor conv2d_autograd(const Tensor& x, const Tensor& weight, const OptTensor& bias, int64_t stride,
                       int64_t padding) {
  if (!records_autograd(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_op().call(x, weight, bias, stride, padding);
  }
  return Conv2dFunction::apply(x, weight, bias, stride, padding);
}

// ---- the norm + activation node ----

void check_device(const char* name, const OptTensor& t, const Tensor& y) {
  TORCH_CHECK_VALUE(!t || t->device() == y.device(), kOp, ": ", name, " is on ", t->device(),
                    " but the input is on ", y.device(), "; every tensor must be on the input's device");
}

// patchgan_conv.py check_norm_act_args without running statistics (the composite copies them)
void check_norm_act_args(const Tensor& y, const OptTensor& norm_weight, const OptTensor& norm_bias, double momentum,
                         double eps, double slope) {
  TORCH_CHECK_VALUE(std::isfinite(momentum), kOp, ": momentum must be a finite float, got ", momentum);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, kOp, ": eps must be a finite float >= 0, got ", eps);
  check_slope(kOp, slope);
  check_device("norm_weight", norm_weight, y);
  check_device("norm_bias", norm_bias, y);
}

// the dtype the norm's fused kernel runs in (patchgan_conv.py norm_dtype): a float16 / bfloat16 y's own where the
// kernels take it (has_half_kernels: CUDA) and each norm parameter is of y's dtype or float32; otherwise float64
// where y or a norm parameter is, else float32. Its op-math type (float32 for the half dtypes) is the statistics':
// mean, rstd and the running statistics the kernel reads or updates.
at::ScalarType norm_dtype(const Tensor& y, const OptTensor& norm_weight, const OptTensor& norm_bias) {
  const at::ScalarType own = y.scalar_type();
  at::ScalarType promoted = own;
  bool params_fit = true;  // every norm parameter of y's dtype or float32
  for (const OptTensor* t : {&norm_weight, &norm_bias}) {
    if (!*t) continue;
    const at::ScalarType dtype = (*t)->scalar_type();
    promoted = at::promote_types(promoted, dtype);
    params_fit = params_fit && (dtype == own || dtype == at::kFloat);
  }
  const bool half = own == at::kHalf || own == at::kBFloat16;
  if (half && params_fit && has_half_kernels(y)) return own;
  return promoted == at::kDouble ? at::kDouble : at::kFloat;
}

OptTensor as_dtype(const OptTensor& t, at::ScalarType dtype) { return t ? OptTensor(t->to(dtype)) : std::nullopt; }

bool updates_running_stats(c10::string_view norm, bool training, const OptTensor& running_mean) {
  return norm == "batch" && training && running_mean.has_value();
}

// the fused kernel on y and the norm parameters in norm_dtype, the running statistics in its op-math type; out in
// y's dtype, the new running statistics in theirs
NormActOutputs norm_act_composite(const Tensor& y, const OptTensor& norm_weight, const OptTensor& norm_bias,
                                  const OptTensor& running_mean, const OptTensor& running_var, c10::string_view norm,
                                  bool training, double momentum, double eps, double slope, bool activation) {
  static auto op = typed_op<std::tuple<Tensor, Tensor, Tensor>(
      const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view, bool,
      double, double, double, bool)>("bsrops::_patchgan_norm_act");
  check_norm_act_args(y, norm_weight, norm_bias, momentum, eps, slope);
  at::ScalarType dtype = norm_dtype(y, norm_weight, norm_bias), stats = at::toOpMathType(dtype);
  OptTensor new_mean, new_var;
  if (norm == "batch" && running_mean) {  // the kernel updates (training) or reads (eval) them
    new_mean = running_mean->to(stats, false, true);
    new_var = running_var->to(stats, false, true);
  }
  auto [out, mean, rstd] = op.call(y.contiguous().to(dtype), as_dtype(norm_weight, dtype), as_dtype(norm_bias, dtype),
                                   new_mean, new_var, norm, training, momentum, eps, slope, activation);
  if (!updates_running_stats(norm, training, running_mean)) {
    return {out.to(y.scalar_type()), mean, rstd, nothing_like(y), nothing_like(y)};
  }
  return {out.to(y.scalar_type()), mean, rstd, new_mean->to(running_mean->scalar_type()),
          new_var->to(running_var->scalar_type())};
}

const auto& norm_act_op() {
  static auto op = typed_op<NormActOutputs(const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                           const OptTensor&, c10::string_view, bool, double, double, double, bool)>(
      "bsrops::patchgan_norm_act");
  return op;
}

int64_t dtype_code(const OptTensor& t) { return t ? static_cast<int64_t>(t->scalar_type()) : -1; }

// grad_y, grad_norm_weight, grad_norm_bias back in the dtypes of y, norm_weight, norm_bias
Tensor in_dtype(const Tensor& grad, int64_t code) {
  return code < 0 ? grad : grad.to(static_cast<at::ScalarType>(code));
}

struct NormActFunction : public torch::autograd::Function<NormActFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& y, const OptTensor& norm_weight,
                               const OptTensor& norm_bias, const OptTensor& running_mean,
                               const OptTensor& running_var, c10::string_view norm, bool training, double momentum,
                               double eps, double slope, bool activation) {
    NormActOutputs outputs;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      outputs = norm_act_op().call(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum,
                                   eps, slope, activation);
    }
    auto& [out, mean, rstd, new_mean, new_var] = outputs;
    ctx->mark_non_differentiable({mean, rstd, new_mean, new_var});
    // without a norm the backward needs only the activation's mask (the sign of out), not y
    ctx->save_for_backward({norm != "none" ? y : Tensor(), tensor_of(norm_weight), out, mean, rstd});
    ctx->saved_data["present"] = present_arguments(y, norm_weight, norm_bias, running_mean, running_var);
    ctx->saved_data["norm"] = std::string(norm);
    ctx->saved_data["training"] = training;
    ctx->saved_data["negative_slope"] = slope;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["dtypes"] =
        std::vector<int64_t>{dtype_code(y), dtype_code(norm_weight), dtype_code(norm_bias)};
    ctx->saved_data["norm_dtype"] = norm_dtype(y, norm_weight, norm_bias);  // the composite's
    return {out, mean, rstd, new_mean, new_var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = typed_op<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
        c10::string_view, bool, double, bool, std::array<bool, 3>)>("bsrops::_patchgan_norm_act_backward");
    variable_list saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &norm_weight = saved[1], &out = saved[2], &mean = saved[3], &rstd = saved[4];
    std::string norm = ctx->saved_data["norm"].toStringRef();
    auto needs = needs_by_argument<5>(ctx, ctx->saved_data["present"].toInt());
    bool has_norm = norm != "none";  // without a norm, norm_weight / norm_bias are unused: no gradient
    std::array<bool, 3> mask{needs[0], needs[1] && has_norm, needs[2] && has_norm};
    variable_list result(11);
    const Tensor& grad_out = grads[0];
    if (!grad_out.defined() || !(mask[0] || mask[1] || mask[2])) return result;
    at::ScalarType dtype = ctx->saved_data["norm_dtype"].toScalarType();
    auto [grad_y, grad_weight, grad_bias] = op.call(
        grad_out.contiguous().to(dtype), (y.defined() ? y : out).to(dtype), out.to(dtype), mean, rstd,
        as_dtype(optional(norm_weight), dtype), norm, ctx->saved_data["training"].toBool(),
        ctx->saved_data["negative_slope"].toDouble(), ctx->saved_data["activation"].toBool(), mask);
    auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    std::array<Tensor, 3> input_grads{in_dtype(grad_y, dtypes[0]), in_dtype(grad_weight, dtypes[1]),
                                      in_dtype(grad_bias, dtypes[2])};
    // for the convolution's backward on oneDNN, the NCHW copy freed here (cuDNN: NCHW is fine)
    if (mask[0] && convs_in_channels_last(input_grads[0])) input_grads[0] = relayout(input_grads[0], Tensor(), true);
    for (size_t i = 0; i < 3; ++i) {
      if (mask[i]) result[i] = input_grads[i];
    }
    return result;
  }
};

NormActOutputs norm_act_autograd(const Tensor& y, const OptTensor& norm_weight, const OptTensor& norm_bias,
                                 const OptTensor& running_mean, const OptTensor& running_var, c10::string_view norm,
                                 bool training, double momentum, double eps, double slope, bool activation) {
  if (!records_autograd(y, norm_weight, norm_bias, running_mean, running_var)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return norm_act_op().call(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum, eps,
                              slope, activation);
  }
  auto out = NormActFunction::apply(y, norm_weight, norm_bias, running_mean, running_var, norm, training, momentum,
                                    eps, slope, activation);
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("_patchgan_conv2d", &conv2d_kernel);
  m.impl("patchgan_norm_act", &norm_act_composite);
}

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("_patchgan_conv2d", &conv2d_kernel);
  m.impl("patchgan_norm_act", &norm_act_composite);
}

TORCH_LIBRARY_IMPL(bsrops, Autograd, m) {
  m.impl("_patchgan_conv2d", &conv2d_autograd);
  m.impl("patchgan_norm_act", &norm_act_autograd);
}

}  // namespace patchgan_conv
}  // namespace bsrops
