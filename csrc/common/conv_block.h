// Helpers of the conv-block ops' C++ composites and autograd nodes (dpcb, patchgan_conv): the C++
// side of bsrops/ops/_common.py (layouts, the convolutions' backward) and of run_fused's
// half-precision rule for the native backends (bsrops/ops/_precision.py): the fused CUDA kernels
// take float16 / bfloat16 tensors; the CPU ones run on float32 copies, results rounded back once.
// Every op is called through the dispatcher, so a Python kernel installed over a native one runs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>

namespace bsrops {
namespace conv_block {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int64_t kNativeConvMaxValues = 20480;     // _common.py NATIVE_CONV_MAX_VALUES
constexpr int64_t kOneDnnPostOpMinValues = 16384;  // _common.py ONEDNN_POST_OP_MIN_VALUES

template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

inline Tensor nothing_like(const Tensor& x) { return x.new_empty({0}); }

// ---- the half-precision rule ----

// Whether the fused kernels that serve t take float16 / bfloat16 tensors: the CUDA ones (_precision.py
// has_half_kernels; the native backends are the only ones that run these C++ formulas).
inline bool has_half_kernels(const Tensor& t) { return t.is_cuda(); }

// The dtype the fused kernels' results come back in: the first float16 / bfloat16 operand's where the
// kernels run on float32 copies (every device but CUDA); none where they take the operands as they are.
inline std::optional<at::ScalarType> narrowed_dtype(std::initializer_list<const Tensor*> operands) {
  for (const Tensor* t : operands) {
    if (t->defined() && at::isReducedFloatingType(t->scalar_type())) {
      return has_half_kernels(*t) ? std::nullopt : std::optional<at::ScalarType>(t->scalar_type());
    }
  }
  return std::nullopt;
}

inline Tensor widened(const Tensor& t) {
  return t.defined() && at::isReducedFloatingType(t.scalar_type()) ? t.to(at::kFloat) : t;
}

inline Tensor narrowed(const Tensor& t, std::optional<at::ScalarType> dtype) { return dtype ? t.to(*dtype) : t; }

// bsrops::_relayout (x + other, other undefined: None) with the half-precision rule
inline Tensor relayout(const Tensor& x, const Tensor& other, bool channels_last) {
  static auto op = typed_op<Tensor(const Tensor&, const OptTensor&, bool)>("bsrops::_relayout");
  auto dtype = narrowed_dtype({&x, &other});
  if (!dtype) return op.call(x, optional(other), channels_last);
  return narrowed(op.call(widened(x), optional(widened(other)), channels_last), dtype);
}

// ---- layouts ----

inline bool convs_in_channels_last(const Tensor& x) {
  return x.device().is_cpu() && (x.sym_size(0) > 1 || x.sym_numel() > kNativeConvMaxValues);
}

// memory_format_of(t) == channels_last
inline bool is_channels_last(const Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

inline Tensor to_channels_last(const Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) ? x : relayout(x, Tensor(), true);
}

// ---- checks (the Python checks' messages) ----

inline void check_slope(const char* op, double slope) {
  TORCH_CHECK_VALUE(std::isfinite(slope) && slope >= 0, op,
                    ": negative_slope must be a finite float >= 0 (the backward reads the activation's mask from the "
                    "sign of its output), got ", slope);
}

// ---- convolutions ----

inline bool uses_onednn_post_op(const Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && at::hasMKLDNN() &&
         x.sym_numel() >= kOneDnnPostOpMinValues;
}

// conv2d + LeakyReLU as one oneDNN primitive (_common.py onednn_conv_leaky_relu, on x where
// uses_onednn_post_op(x))
inline Tensor onednn_conv_leaky_relu(const Tensor& x, const Tensor& weight, const OptTensor& bias, int64_t stride,
                                     int64_t padding, double slope) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  std::vector<c10::IValue> stack{x, weight, bias ? c10::IValue(bias->contiguous()) : c10::IValue(),
                                 std::vector<int64_t>{padding, padding}, std::vector<int64_t>{stride, stride},
                                 std::vector<int64_t>{1, 1}, int64_t{1}, std::string("leaky_relu"),
                                 c10::List<std::optional<at::Scalar>>({at::Scalar(slope)}), std::string("")};
  op.callBoxed(stack);
  return stack.back().toTensor();
}

// (grad_x, grad_weight, grad_bias) of conv2d(x, weight, bias, stride, padding); empty where not wanted
inline std::tuple<Tensor, Tensor, Tensor> conv_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                                        const c10::SymInt& stride, const c10::SymInt& padding,
                                                        std::array<bool, 3> mask) {
  if (!(mask[0] || mask[1] || mask[2])) return {nothing_like(x), nothing_like(x), nothing_like(x)};
  c10::SymInt bias_size = weight.sym_size(0);
  auto [grad_x, grad_weight, grad_bias] = at::convolution_backward_symint(
      grad, x, weight, c10::SymIntArrayRef(&bias_size, 1), {stride, stride}, {padding, padding}, {1, 1}, false,
      {0, 0}, 1, mask);
  auto or_nothing = [&x](const Tensor& g) { return g.defined() ? g : nothing_like(x); };
  return {or_nothing(grad_x), or_nothing(grad_weight), or_nothing(grad_bias)};
}

// ---- autograd nodes ----

inline const Tensor& tensor_of(const Tensor& t) { return t; }

inline const Tensor& tensor_of(const OptTensor& t) {
  static const Tensor undefined;
  return t ? *t : undefined;
}

// Bits of the tensor arguments given, in order (an absent optional one is no variable of autograd's).
template <class... Tensors>
int64_t present_arguments(const Tensors&... tensors) {
  int64_t bits = 0, i = 0;
  ((bits |= int64_t{tensor_of(tensors).defined()} << i++), ...);
  return bits;
}

// ctx->needs_input_grad by argument, for the `count` tensor arguments of present_arguments' bits (autograd
// numbers the variables given, skipping the absent ones).
template <size_t count>
std::array<bool, count> needs_by_argument(torch::autograd::AutogradContext* ctx, int64_t present) {
  std::array<bool, count> needs{};
  size_t variable = 0;
  for (size_t i = 0; i < count; ++i) {
    if (present >> i & 1) needs[i] = ctx->needs_input_grad(variable++);
  }
  return needs;
}

// Whether autograd records an op on these tensors: grad mode on and one of them requires a gradient.
template <class... Tensors>
bool records_autograd(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && ((tensor_of(tensors).defined() && tensor_of(tensors).requires_grad()) || ...);
}

}  // namespace conv_block
}  // namespace bsrops
