// bsrops::dpcb on the native backends: its composite kernel (the convolutions around the fused
// elementwise ops) for CPU and CUDA, and its autograd formula for the Autograd key (a C++ node).
//
// The op sequences, layouts and memory releases are those of the Python composites in
// bsrops/ops/dpcb.py (`_forward_composite`, `_backward_composite`), which remain the kernels
// without _C and under the Python backends: both give the same results, bit for bit. Every
// fused op goes through the dispatcher, so a Python kernel installed over a native one still
// runs. The fused kernels' half-precision rule is the native backends' one
// (bsrops/ops/_precision.py, run_fused): the CUDA kernels take float16 / bfloat16 tensors; the
// CPU kernels run on float32 copies and their results come back rounded once.
//
// The autograd node keeps h1, f1, h2, f2 (outputs 2..5) outside autograd's saved tensors and
// drops each once the backward has used it; a second backward through a retained graph
// recomputes them from the saved inputs. Python sees them as `grad_fn.intermediates`.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "../common/conv_block.h"

namespace bsrops {
namespace dpcb {
namespace {

using namespace conv_block;
using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kInputs = 10;  // the tensor arguments; negative_slope is the 11th

// ---- the fused ops, with the native backends' half-precision rule ----

void leaky_relu_(Tensor& x, double slope) {
  static auto op = typed_op<void(Tensor&, double)>("bsrops::_leaky_relu_");
  if (!narrowed_dtype({&x})) return op.call(x, slope);
  Tensor wide = widened(x);
  op.call(wide, slope);
  x.copy_(wide);
}

void leaky_relu_backward_(Tensor& grad, const Tensor& out, double slope) {
  static auto op = typed_op<void(Tensor&, const Tensor&, double)>("bsrops::_leaky_relu_backward_");
  if (!narrowed_dtype({&grad, &out})) return op.call(grad, out, slope);
  Tensor wide = widened(grad);
  op.call(wide, widened(out), slope);
  grad.copy_(wide);
}

std::tuple<Tensor, Tensor> epilogue(const Tensor& x_img, const Tensor& f1, const Tensor& x_cond, const Tensor& f2) {
  static auto op = typed_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
      "bsrops::_dpcb_epilogue");
  auto dtype = narrowed_dtype({&x_img, &f1, &x_cond, &f2});
  if (!dtype) return op.call(x_img, f1, x_cond, f2);
  auto [out_img, out_cond] = op.call(widened(x_img), widened(f1), widened(x_cond), widened(f2));
  return {narrowed(out_img, dtype), narrowed(out_cond, dtype)};
}

// f1 or f2 undefined: the op's None (only the other gradient is computed)
std::tuple<Tensor, Tensor> epilogue_backward(const Tensor& grad_img, const Tensor& grad_cond, const Tensor& f1,
                                             const Tensor& f2, bool channels_last) {
  static auto op = typed_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&,
                                                       const OptTensor&, bool)>("bsrops::_dpcb_epilogue_backward");
  auto dtype = narrowed_dtype({&grad_img, &grad_cond, &f1, &f2});
  if (!dtype) return op.call(grad_img, grad_cond, optional(f1), optional(f2), channels_last);
  auto [grad_f1, grad_f2] = op.call(widened(grad_img), widened(grad_cond), optional(widened(f1)),
                                    optional(widened(f2)), channels_last);
  return {narrowed(grad_f1, dtype), narrowed(grad_f2, dtype)};
}

// ---- the forward composite ----

c10::SymInt same_padding(const Tensor& weight) { return weight.sym_size(-1) / 2; }

Tensor conv(const Tensor& x, const Tensor& weight, const OptTensor& bias) {
  c10::SymInt padding = same_padding(weight);
  return at::conv2d_symint(x, weight, bias, {1, 1}, {padding, padding}, {1, 1});
}

// lrelu(conv(x)): oneDNN's fused post-op, else the activation in place of the conv output
Tensor activated_conv(const Tensor& x, const Tensor& weight, const OptTensor& bias, double slope) {
  if (uses_onednn_post_op(x)) return onednn_conv_leaky_relu(x, weight, bias, 1, weight.size(-1) / 2, slope);
  Tensor h = conv(x, weight, bias);
  leaky_relu_(h, slope);
  return h;
}

// (h, f): h = lrelu(conv(x)), f = conv(h); the channels_last copy of x is freed before the second conv
std::tuple<Tensor, Tensor> path_forward(const Tensor& x, const Tensor& wa, const OptTensor& ba, const Tensor& wb,
                                        const OptTensor& bb, double slope, bool channels_last) {
  Tensor h = activated_conv(channels_last ? to_channels_last(x) : x, wa, ba, slope);
  Tensor f = conv(h, wb, bb);
  return {h, f};
}

Outputs forward_composite(const Tensor& x_img, const Tensor& x_cond, const Tensor& w1, const OptTensor& b1,
                          const Tensor& w2, const OptTensor& b2, const Tensor& w3, const OptTensor& b3,
                          const Tensor& w4, const OptTensor& b4, double slope) {
  check_slope("dpcb", slope);
  bool channels_last = convs_in_channels_last(x_img);
  auto [h1, f1] = path_forward(x_img, w1, b1, w2, b2, slope, channels_last);
  auto [h2, f2] = path_forward(x_cond, w3, b3, w4, b4, slope, channels_last);
  auto [out_img, out_cond] = epilogue(x_img, f1, x_cond, f2);
  return {out_img, out_cond, h1, f1, h2, f2};
}

// ---- the backward composite ----

std::tuple<Tensor, Tensor, Tensor> same_conv_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                                      std::array<bool, 3> mask) {
  return conv_backward(grad, x, weight, 1, same_padding(weight), mask);
}

// Grads of x + path(x): (grad_x, grad_wa, grad_ba, grad_wb, grad_bb), mask in that order. grad_f and h are
// taken over and freed as soon as they have been used.
std::array<Tensor, 5> path_backward(Tensor grad_f, Tensor h, const Tensor& grad_residual, const Tensor& x,
                                    const Tensor& wa, const Tensor& wb, double slope, std::array<bool, 5> mask,
                                    bool channels_last) {
  bool need_h = mask[0] || mask[1] || mask[2];
  auto [grad_h, grad_wb, grad_bb] = same_conv_backward(grad_f, h, wb, {need_h, mask[3], mask[4]});
  grad_f.reset();
  std::array<Tensor, 5> grads{nothing_like(x), nothing_like(x), nothing_like(x), grad_wb, grad_bb};
  if (!need_h) return grads;
  leaky_relu_backward_(grad_h, h, slope);
  h.reset();
  Tensor grad_x_conv;
  {
    Tensor x_conv = channels_last ? to_channels_last(x) : x;
    std::tie(grad_x_conv, grads[1], grads[2]) = same_conv_backward(grad_h, x_conv, wa, {mask[0], mask[1], mask[2]});
  }
  grad_h.reset();
  if (mask[0]) grads[0] = relayout(grad_x_conv, grad_residual, is_channels_last(x));  // + the residual's gradient
  return grads;
}

// All ten input gradients (empty where mask is false); held = {h1, f1, h2, f2}, each freed once used.
std::array<Tensor, kInputs> backward_composite(const Tensor& grad_img_in, const Tensor& grad_cond_in,
                                               const variable_list& inputs, std::vector<Tensor> held, double slope,
                                               const std::array<bool, kInputs>& mask) {
  const Tensor &x_img = inputs[0], &x_cond = inputs[1];
  Tensor h1 = std::move(held[0]), f1 = std::move(held[1]), h2 = std::move(held[2]), f2 = std::move(held[3]);
  held.clear();
  Tensor grad_img = grad_img_in.defined() ? grad_img_in : at::zeros_like(x_img);  // only out_cond was used
  Tensor grad_cond = grad_cond_in.defined() ? grad_cond_in : at::zeros_like(x_cond);
  bool channels_last = convs_in_channels_last(x_img);  // where the forward's convolutions ran
  Tensor grad_f1, grad_f2;
  if (f2.sym_sizes() != f1.sym_sizes()) {  // a 1x1 condition: grad_f1 and the reduced grad_f2 in one pass
    std::tie(grad_f1, grad_f2) = epilogue_backward(grad_img, grad_cond, f1, f2, channels_last);
    f1.reset();
    f2.reset();
  } else {  // image-sized: f1 is freed before grad_f1 is allocated
    grad_f2 = std::get<1>(epilogue_backward(grad_img, grad_cond, f1, Tensor(), channels_last));
    f1.reset();
    grad_f1 = std::get<0>(epilogue_backward(grad_img, grad_cond, Tensor(), f2, channels_last));
    f2.reset();
  }
  auto img = path_backward(std::move(grad_f1), std::move(h1), grad_img_in, x_img, inputs[2], inputs[4], slope,
                           {mask[0], mask[2], mask[3], mask[4], mask[5]}, channels_last);
  auto cond = path_backward(std::move(grad_f2), std::move(h2), grad_cond, x_cond, inputs[6], inputs[8], slope,
                            {mask[1], mask[6], mask[7], mask[8], mask[9]}, channels_last);
  return {img[0], cond[0], img[1], img[2], img[3], img[4], cond[1], cond[2], cond[3], cond[4]};
}

// ---- the autograd node ----

const auto& dpcb_op() {
  static auto op = typed_op<Outputs(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
                                    const OptTensor&, const Tensor&, const OptTensor&, const Tensor&,
                                    const OptTensor&, double)>("bsrops::dpcb");
  return op;
}

Outputs call_dpcb(const variable_list& inputs, double slope) {
  const auto& t = inputs;
  return dpcb_op().call(t[0], t[1], t[2], optional(t[3]), t[4], optional(t[5]), t[6], optional(t[7]), t[8],
                        optional(t[9]), slope);
}

std::vector<Tensor> intermediates_of(const Outputs& out) {
  return {std::get<2>(out), std::get<3>(out), std::get<4>(out), std::get<5>(out)};
}

struct DpcbFunction : public torch::autograd::Function<DpcbFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x_img, const Tensor& x_cond, const Tensor& w1,
                               const OptTensor& b1, const Tensor& w2, const OptTensor& b2, const Tensor& w3,
                               const OptTensor& b3, const Tensor& w4, const OptTensor& b4, double slope) {
    variable_list inputs{x_img, x_cond, w1, b1.value_or(Tensor()), w2, b2.value_or(Tensor()),
                         w3, b3.value_or(Tensor()), w4, b4.value_or(Tensor())};
    Outputs out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = call_dpcb(inputs, slope);
    }
    std::vector<Tensor> held = intermediates_of(out);
    ctx->mark_non_differentiable(held);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(inputs);
    std::vector<int64_t> versions;
    for (const Tensor& t : held) versions.push_back(t._version());
    ctx->saved_data["intermediates"] = held;
    ctx->saved_data["versions"] = versions;
    ctx->saved_data["present"] = present_arguments(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4);
    ctx->saved_data["negative_slope"] = slope;
    return {std::get<0>(out), std::get<1>(out), held[0], held[1], held[2], held[3]};
  }

  // {h1, f1, h2, f2} from the forward (given up by the node), or recomputed on a second backward
  static std::vector<Tensor> held_intermediates(AutogradContext* ctx, const variable_list& inputs, double slope) {
    c10::IValue held = std::exchange(ctx->saved_data["intermediates"], c10::IValue());
    if (held.isNone()) {
      at::NoGradGuard no_grad;
      return intermediates_of(call_dpcb(inputs, slope));
    }
    std::vector<Tensor> tensors = held.toTensorVector();
    auto versions = ctx->saved_data["versions"].toIntVector();
    for (size_t i = 0; i < tensors.size(); ++i) {
      TORCH_CHECK(tensors[i]._version() == versions[i],
                  "bsrops.dpcb: h1, f1, h2 or f2 (the op's extra outputs, needed by its backward) was modified in "
                  "place");
    }
    return tensors;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto needs = needs_by_argument<kInputs>(ctx, ctx->saved_data["present"].toInt());
    variable_list result(kInputs + 1);
    bool any_need = false;
    for (bool need : needs) any_need = any_need || need;
    if (!any_need || (!grads[0].defined() && !grads[1].defined())) return result;
    double slope = ctx->saved_data["negative_slope"].toDouble();
    variable_list inputs = ctx->get_saved_variables();
    auto held = held_intermediates(ctx, inputs, slope);
    auto input_grads = backward_composite(grads[0], grads[1], inputs, std::move(held), slope, needs);
    for (int i = 0; i < kInputs; ++i) {
      if (needs[i]) result[i] = std::move(input_grads[i]);
    }
    return result;
  }
};

using DpcbNode = torch::autograd::CppNode<DpcbFunction>;

Outputs dpcb_autograd(const Tensor& x_img, const Tensor& x_cond, const Tensor& w1, const OptTensor& b1,
                      const Tensor& w2, const OptTensor& b2, const Tensor& w3, const OptTensor& b3, const Tensor& w4,
                      const OptTensor& b4, double slope) {
  if (!records_autograd(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return dpcb_op().call(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, slope);
  }
  auto out = DpcbFunction::apply(x_img, x_cond, w1, b1, w2, b2, w3, b3, w4, b4, slope);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

// ---- the node's Python type: grad_fn.intermediates ----

PyObject* node_intermediates(PyObject* self, void*) {
  HANDLE_TH_ERRORS
  auto& node = dynamic_cast<DpcbNode&>(*reinterpret_cast<torch::autograd::THPCppFunction*>(self)->cdata);
  const c10::IValue& held = node.ctx_.saved_data["intermediates"];
  if (held.isNone()) Py_RETURN_NONE;
  auto tensors = held.toTensorVector();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(tensors.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < tensors.size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), THPVariable_Wrap(tensors[i]));
  }
  return list;
  END_HANDLE_TH_ERRORS
}

using namespace torch::autograd;  // the names THP_FUNCTION_DEFAULT_PROPERTIES uses

PyGetSetDef node_properties[] = {
    THP_FUNCTION_DEFAULT_PROPERTIES,
    {(char*)"intermediates", node_intermediates, nullptr,
     (char*)"[h1, f1, h2, f2] until the backward takes them over, then None", nullptr},
    {nullptr}};

// the methods of torch's C++ nodes that torch exports
PyMethodDef node_methods[] = {
    {(char*)"_register_hook_dict", THPCppFunction_register_hook_dict, METH_O, nullptr},
    {(char*)"register_hook", THPCppFunction_register_hook, METH_O, nullptr},
    {(char*)"register_prehook", THPCppFunction_register_prehook, METH_O, nullptr},
    {(char*)"name", THPCppFunction_name, METH_NOARGS, nullptr},
    {(char*)"_sequence_nr", THPCppFunction_sequence_nr, METH_NOARGS, nullptr},
    {nullptr}};

PyTypeObject node_type;

}  // namespace

void register_python_node() {
  torch::autograd::_initFunctionPyTypeObject(node_type, "DpcbBackward", node_properties, node_methods);
  torch::autograd::registerCppFunction(typeid(DpcbNode), &node_type);
}

TORCH_LIBRARY_IMPL(bsrops, CPU, m) { m.impl("dpcb", &forward_composite); }

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) { m.impl("dpcb", &forward_composite); }

TORCH_LIBRARY_IMPL(bsrops, Autograd, m) { m.impl("dpcb", &dpcb_autograd); }

}  // namespace dpcb
}  // namespace bsrops
