// CPU kernels of bsrops::dpcb's fused part (the elementwise work around the four convolutions).
//
// Every kernel is one pass over its tensors, parallel over (n, c) planes (or equal chunks),
// with the loops over the per-element functions of dpcb.h vectorised by the compiler
// (`omp simd`, reductions included; float loops also compiled for AVX2 / AVX-512 and picked
// at load time, cpu_isa.h). No temporaries: the LeakyReLU forward and backward
// work in place, the epilogue writes out_img and out_cond in the same pass, and its
// backward writes grad_f1 and reduces grad_f2 in one pass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <tuple>

#include "../call_counter.h"
#include "../cpu_isa.h"
#include "dpcb.h"

namespace bsrops {
namespace dpcb {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel chunk: small tensors run inline

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dpcb (cpu): ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "dpcb (cpu): ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

// The loops over one contiguous run of n elements, each its own multi-ISA function
// (cpu_isa.h). Written inline inside the parallel lambdas, GCC left some of them scalar (a
// conditional load, a LeakyReLU select kept as a branch); as plain-pointer functions every
// one vectorises.
template <typename T>
BSR_CLONES void leaky_relu_run(T* x, int64_t n, T slope) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) x[e] = leaky_relu_element(x[e], slope);
}

template <typename T>
BSR_CLONES void leaky_relu_grad_run(T* grad, const T* out, int64_t n, T slope) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) grad[e] = leaky_relu_grad_element(grad[e], out[e], slope);
}

// out = x + f1 * f2, elementwise (also grad_f2 = grad_cond + grad_img * f1)
template <typename T>
BSR_CLONES void modulate_run(const T* x, const T* f1, const T* f2, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = modulate_element(x[e], f1[e], f2[e]);
}

// out = x + f1 * f2 with one f2 for the run (the Restorer's 1 x 1 condition)
template <typename T>
BSR_CLONES void modulate_scalar_run(const T* x, const T* f1, T f2, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = modulate_element(x[e], f1[e], f2);
}

// out = a * b
template <typename T>
BSR_CLONES void multiply_run(const T* a, const T* b, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = a[e] * b[e];
}

template <typename T>
BSR_CLONES void scale_run(const T* a, T scale, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = a[e] * scale;
}

// sum(grad_img * f1) over a run: the gradient of a 1 x 1 f2
template <typename T, typename acc_t>
BSR_CLONES acc_t grad_cond_scale_run(const T* grad_img, const T* f1, int64_t n) {
  return grad_cond_scale_plane<T, acc_t>(grad_img, f1, 0, n, 1);
}

// body(begin, end) over equal chunks of [0, numel)
template <typename F>
void for_chunks(int64_t numel, const F& body) {
  at::parallel_for(0, numel, kGrain, body);
}

void leaky_relu_cpu(at::Tensor& x, double slope) {
  count_call("_leaky_relu_.cpu");
  check_cpu_float(x, "x");
  TORCH_CHECK(x.is_contiguous(), "_leaky_relu_: x must be contiguous");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "leaky_relu_cpu", [&] {
    scalar_t* data = x.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    for_chunks(x.numel(), [&](int64_t begin, int64_t end) { leaky_relu_run(data + begin, end - begin, s); });
  });
}

void leaky_relu_backward_cpu(at::Tensor& grad, const at::Tensor& out_in, double slope) {
  count_call("_leaky_relu_backward_.cpu");
  check_cpu_float(grad, "grad");
  TORCH_CHECK(grad.is_contiguous() && out_in.sizes() == grad.sizes() && out_in.scalar_type() == grad.scalar_type(),
              "_leaky_relu_backward_: grad must be contiguous and out of its shape and dtype");
  const at::Tensor out = out_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "leaky_relu_backward_cpu", [&] {
    scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    for_chunks(grad.numel(), [&](int64_t begin, int64_t end) { leaky_relu_grad_run(g + begin, o + begin, end - begin, s); });
  });
}

// planes of hw elements, several per parallel chunk when they are small
template <typename F>
void for_planes(int64_t planes, int64_t hw, const F& body) {
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / std::max<int64_t>(hw, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) body(p);
  });
}

std::tuple<at::Tensor, at::Tensor> epilogue_cpu(const at::Tensor& x_in, const at::Tensor& f1_in,
                                                const at::Tensor& xc_in, const at::Tensor& f2_in) {
  count_call("_dpcb_epilogue.cpu");
  check_cpu_float(x_in, "x_img");
  const bool pointwise = check_epilogue(x_in, f1_in, xc_in, f2_in);
  const at::Tensor x = x_in.contiguous(), f1 = f1_in.contiguous(), xc = xc_in.contiguous(), f2 = f2_in.contiguous();
  at::Tensor out = at::empty_like(x), out_cond = at::empty_like(xc);
  const int64_t planes = x.size(0) * x.size(1), hw = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpcb_epilogue_cpu", [&] {
    const scalar_t *xd = x.data_ptr<scalar_t>(), *f1d = f1.data_ptr<scalar_t>();
    const scalar_t *xcd = xc.data_ptr<scalar_t>(), *f2d = f2.data_ptr<scalar_t>();
    scalar_t *od = out.data_ptr<scalar_t>(), *ocd = out_cond.data_ptr<scalar_t>();
    if (pointwise) {  // f2 is one scalar per plane
      for_planes(planes, hw, [&](int64_t p) {
        modulate_scalar_run(xd + p * hw, f1d + p * hw, f2d[p], od + p * hw, hw);
        ocd[p] = xcd[p] + f2d[p];
      });
      return;
    }
    for_chunks(x.numel(), [&](int64_t begin, int64_t end) {
      modulate_run(xd + begin, f1d + begin, f2d + begin, od + begin, end - begin);
      modulate_scalar_run(xcd + begin, f2d + begin, scalar_t(1), ocd + begin, end - begin);  // x_cond + f2
    });
  });
  return {out, out_cond};
}

// grad_f1 = grad_img * f2; grad_f2 = grad_cond + grad_img * f1 (summed over H x W for a 1 x 1 f2).
// A missing grad_img / grad_cond is zero.
std::tuple<at::Tensor, at::Tensor> epilogue_backward_cpu(const c10::optional<at::Tensor>& grad_img_in,
                                                         const c10::optional<at::Tensor>& grad_cond_in,
                                                         const at::Tensor& f1_in, const at::Tensor& f2_in) {
  count_call("_dpcb_epilogue_backward.cpu");
  check_cpu_float(f1_in, "f1");
  const bool pointwise = check_epilogue(f1_in, f1_in, f2_in, f2_in);
  const at::Tensor f1 = f1_in.contiguous(), f2 = f2_in.contiguous();
  const bool has_gi = grad_img_in.has_value() && grad_img_in->defined();
  const bool has_gc = grad_cond_in.has_value() && grad_cond_in->defined();
  TORCH_CHECK(!has_gi || grad_img_in->sizes() == f1.sizes(), "_dpcb_epilogue_backward: grad_img must be ", f1.sizes());
  TORCH_CHECK(!has_gc || grad_cond_in->sizes() == f2.sizes(), "_dpcb_epilogue_backward: grad_cond must be ", f2.sizes());
  // zero where there is no gradient (autograd leaves an unused output's gradient undefined)
  const at::Tensor gc = has_gc ? grad_cond_in->contiguous() : at::zeros_like(f2);
  if (!has_gi) return {at::zeros_like(f1), gc.clone()};
  const at::Tensor gi = grad_img_in->contiguous();
  at::Tensor grad_f1 = at::empty_like(f1), grad_f2 = at::empty_like(f2);
  const int64_t planes = f1.size(0) * f1.size(1), hw = f1.size(2) * f1.size(3);
  AT_DISPATCH_FLOATING_TYPES(f1.scalar_type(), "dpcb_epilogue_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *f1d = f1.data_ptr<scalar_t>(), *f2d = f2.data_ptr<scalar_t>();
    const scalar_t *gid = gi.data_ptr<scalar_t>(), *gcd = gc.data_ptr<scalar_t>();
    scalar_t *g1 = grad_f1.data_ptr<scalar_t>(), *g2 = grad_f2.data_ptr<scalar_t>();
    if (pointwise) {
      for_planes(planes, hw, [&](int64_t p) {
        scale_run(gid + p * hw, f2d[p], g1 + p * hw, hw);
        const acc_t sum = grad_cond_scale_run<scalar_t, acc_t>(gid + p * hw, f1d + p * hw, hw);
        g2[p] = static_cast<scalar_t>(sum + static_cast<acc_t>(gcd[p]));
      });
      return;
    }
    for_chunks(f1.numel(), [&](int64_t begin, int64_t end) {
      multiply_run(gid + begin, f2d + begin, g1 + begin, end - begin);
      modulate_run(gcd + begin, gid + begin, f1d + begin, g2 + begin, end - begin);
    });
  });
  return {grad_f1, grad_f2};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("_leaky_relu_", &leaky_relu_cpu);
  m.impl("_leaky_relu_backward_", &leaky_relu_backward_cpu);
  m.impl("_dpcb_epilogue", &epilogue_cpu);
  m.impl("_dpcb_epilogue_backward", &epilogue_backward_cpu);
}

}  // namespace dpcb
}  // namespace bsrops
