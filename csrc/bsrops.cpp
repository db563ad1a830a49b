// Schemas of every bsrops op (forward and explicit backward), the launch counter,
// and the Python module stub that carries the build information.
#include <Python.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <string>

#include "call_counter.h"

#ifndef BSROPS_TORCH_VERSION
#define BSROPS_TORCH_VERSION "unknown"
#endif
#ifndef BSROPS_WITH_CUDA
#define BSROPS_WITH_CUDA 0
#endif
#ifndef BSROPS_CUDA_ARCHS
#define BSROPS_CUDA_ARCHS ""
#endif
#ifdef _OPENMP
#define BSROPS_WITH_OPENMP 1
#else
#define BSROPS_WITH_OPENMP 0
#endif

namespace bsrops {
namespace {
std::mutex counter_mutex;
std::map<std::string, long long>& counters() {
  static std::map<std::string, long long> table;
  return table;
}
}  // namespace

void count_call(const char* kernel_name) {
  std::lock_guard<std::mutex> lock(counter_mutex);
  ++counters()[kernel_name];
}
}  // namespace bsrops

TORCH_LIBRARY(bsrops, m) {
  // blur_downsample: spatially-variant blur fused with stride-s decimation.
  m.def("blur_downsample(Tensor x, Tensor kernel, int stride=1, str padding='reflect', bool flip=False) -> Tensor");
  m.def(
      "_blur_downsample_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, str padding, bool flip, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  // The same maths through the per-element functions the CUDA kernels use (debug backend "cpu_shared").
  m.def("_blur_downsample_shared(Tensor x, Tensor kernel, int stride=1, str padding='reflect', bool flip=False) -> Tensor");
  m.def(
      "_blur_downsample_shared_backward(Tensor grad_out, Tensor x, Tensor kernel, int stride, str padding, "
      "bool flip, bool[2] output_mask) -> (Tensor, Tensor)");

  // usrnet_data_step: USRNet's closed-form FFT data step. usrnet_solve is the per-iteration
  // part over the loop invariants of _usrnet_precompute: FB (N, H, W, 2) and FBFy
  // (N, C, H, W, 2), complex spectra as real views, and F2B_mean (N, h, w).
  m.def("usrnet_data_step(Tensor z, Tensor y, Tensor kernel, Tensor alpha, int scale) -> Tensor");
  m.def(
      "_usrnet_data_step_backward(Tensor grad_x, Tensor z, Tensor y, Tensor kernel, Tensor alpha, int scale, "
      "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("usrnet_solve(Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, int scale) -> Tensor");
  m.def(
      "_usrnet_solve_backward(Tensor grad_x, Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, "
      "int scale, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("_usrnet_precompute(Tensor y, Tensor kernel, int scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_usrnet_precompute_backward(Tensor grad_FB, Tensor grad_FBFy, Tensor grad_F2B_mean, Tensor y, "
      "Tensor kernel, int scale, bool[2] output_mask) -> (Tensor, Tensor)");
  // usrnet_solve through the per-element functions the CUDA kernels use (debug backend "cpu_shared").
  m.def("_usrnet_solve_shared(Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, Tensor alpha, int scale) -> Tensor");
  m.def(
      "_usrnet_solve_shared_backward(Tensor grad_x, Tensor z, Tensor FB, Tensor FBFy, Tensor F2B_mean, "
      "Tensor alpha, int scale, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // dpcb: DANv2's dual-path conditional block. The convolutions run on oneDNN/cuDNN inside the
  // op (in channels_last on the CPU); h1, f1, h2, f2 (LeakyReLU outputs and second conv outputs) are
  // returned for the backward, which frees each as soon as it has used it.
  m.def(
      "dpcb(Tensor x_img, Tensor x_cond, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor w3, Tensor? b3, "
      "Tensor w4, Tensor? b4, float negative_slope=0.2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The forward without autograd (nothing kept for a backward; the Python dpcb() picks it): the
  // outputs are written in place of f1 and f2.
  m.def(
      "_dpcb_inference(Tensor x_img, Tensor x_cond, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor w3, "
      "Tensor? b3, Tensor w4, Tensor? b4, float negative_slope=0.2) -> (Tensor, Tensor)");
  // Its fused elementwise kernels (everything around the convolutions), any mix of NCHW and
  // channels_last operands.
  m.def("_leaky_relu_(Tensor(a!) x, float negative_slope) -> ()");
  m.def("_leaky_relu_backward_(Tensor(a!) grad, Tensor out, float negative_slope) -> ()");
  m.def("_dpcb_epilogue(Tensor x_img, Tensor f1, Tensor x_cond, Tensor f2) -> (Tensor, Tensor)");
  m.def(
      "_dpcb_epilogue_backward(Tensor grad_img, Tensor grad_cond, Tensor? f1, Tensor? f2, bool channels_last) "
      "-> (Tensor, Tensor)");
  // x (+ other) in NCHW or channels_last: the layout changes around channels_last convolutions
  // (dpcb, and patchgan_conv's backward), fused with a residual gradient's add.
  m.def("_relayout(Tensor x, Tensor? other, bool channels_last) -> Tensor");

  // patchgan_conv: conv + bias + norm (none | instance | batch) + optional LeakyReLU. Returns
  // (out, y = conv output, mean, rstd, new running_mean, new running_var). Functional: the Python
  // wrapper writes the new running statistics into the buffers. A composite of the conv and
  // patchgan_norm_act (out, mean, rstd, new running_mean, new running_var), which carries the
  // autograd formula: two autograd nodes, so y is released before the conv's backward.
  m.def(
      "patchgan_conv(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, str norm, Tensor? norm_weight, "
      "Tensor? norm_bias, Tensor? running_mean, Tensor? running_var, bool training, float momentum, "
      "float eps, float negative_slope, bool activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "patchgan_norm_act(Tensor y, Tensor? norm_weight, Tensor? norm_bias, Tensor? running_mean, "
      "Tensor? running_var, str norm, bool training, float momentum, float eps, float negative_slope, "
      "bool activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Its fused kernels: norm statistics + affine + activation, and their backward.
  m.def(
      "_patchgan_norm_act(Tensor y, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "str norm, bool training, float momentum, float eps, float negative_slope, bool activation) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "_patchgan_norm_act_backward(Tensor grad_out, Tensor y, Tensor out, Tensor mean, Tensor rstd, Tensor? weight, "
      "str norm, bool training, float negative_slope, bool activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // aten's conv2d whose backward runs in channels_last when its incoming gradient is (the
  // norm's backward hands it so): no oneDNN reorder buffers.
  m.def("_patchgan_conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padding) -> Tensor");
}

static PyObject* kernel_calls(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(bsrops::counter_mutex);
  PyObject* result = PyDict_New();
  for (const auto& entry : bsrops::counters()) {
    PyObject* value = PyLong_FromLongLong(entry.second);
    PyDict_SetItemString(result, entry.first.c_str(), value);
    Py_DECREF(value);
  }
  return result;
}

static PyMethodDef methods[] = {
    {"kernel_calls", kernel_calls, METH_NOARGS, "Launch counts of the native kernels, by '<op>.<backend>'."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bsrops native kernels", -1, methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "TORCH_VERSION", BSROPS_TORCH_VERSION);
  PyModule_AddIntConstant(m, "WITH_CUDA", BSROPS_WITH_CUDA);
  PyModule_AddIntConstant(m, "WITH_OPENMP", BSROPS_WITH_OPENMP);
  PyModule_AddStringConstant(m, "CUDA_ARCHS", BSROPS_CUDA_ARCHS);
  return m;
}
