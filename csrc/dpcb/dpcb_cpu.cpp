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

void leaky_relu_cpu(at::Tensor& x, double slope) {
  count_call("_leaky_relu_.cpu");
  check_cpu_float(x, "x");
  TORCH_CHECK(x.is_contiguous(), "_leaky_relu_: x must be contiguous");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "leaky_relu_cpu", [&] {
    scalar_t* data = x.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
        BSR_SIMD
        for (int64_t e = begin; e < end; ++e) data[e] = leaky_relu_element(data[e], s);
      });
    });
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
    at::parallel_for(0, grad.numel(), kGrain, [&](int64_t begin, int64_t end) {
      with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
        BSR_SIMD
        for (int64_t e = begin; e < end; ++e) g[e] = leaky_relu_grad_element(g[e], o[e], s);
      });
    });
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
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / std::max<int64_t>(hw, 1)), [&](int64_t p0, int64_t p1) {
      with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t base = p * hw;
        if (pointwise) {  // f2 is one scalar per plane
          const scalar_t scale = f2d[p];
BSR_SIMD
          for (int64_t e = base; e < base + hw; ++e) od[e] = modulate_element(xd[e], f1d[e], scale);
          ocd[p] = xcd[p] + scale;
        } else {
BSR_SIMD
          for (int64_t e = base; e < base + hw; ++e) {
            od[e] = modulate_element(xd[e], f1d[e], f2d[e]);
            ocd[e] = xcd[e] + f2d[e];
          }
        }
      }
      });
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
  const at::Tensor gi = has_gi ? grad_img_in->contiguous() : at::Tensor();
  const at::Tensor gc = has_gc ? grad_cond_in->contiguous() : at::Tensor();
  TORCH_CHECK(!has_gi || gi.sizes() == f1.sizes(), "_dpcb_epilogue_backward: grad_img must be ", f1.sizes());
  TORCH_CHECK(!has_gc || gc.sizes() == f2.sizes(), "_dpcb_epilogue_backward: grad_cond must be ", f2.sizes());
  at::Tensor grad_f1 = at::empty_like(f1), grad_f2 = at::empty_like(f2);
  const int64_t planes = f1.size(0) * f1.size(1), hw = f1.size(2) * f1.size(3);
  AT_DISPATCH_FLOATING_TYPES(f1.scalar_type(), "dpcb_epilogue_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *f1d = f1.data_ptr<scalar_t>(), *f2d = f2.data_ptr<scalar_t>();
    const scalar_t* gid = has_gi ? gi.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gcd = has_gc ? gc.data_ptr<scalar_t>() : nullptr;
    scalar_t *g1 = grad_f1.data_ptr<scalar_t>(), *g2 = grad_f2.data_ptr<scalar_t>();
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / std::max<int64_t>(hw, 1)), [&](int64_t p0, int64_t p1) {
      with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t base = p * hw;
        if (!has_gi) {
          for (int64_t e = base; e < base + hw; ++e) g1[e] = 0;
          if (pointwise) g2[p] = has_gc ? gcd[p] : scalar_t(0);
          else for (int64_t e = base; e < base + hw; ++e) g2[e] = has_gc ? gcd[e] : scalar_t(0);
          continue;
        }
        if (pointwise) {
          const scalar_t scale = f2d[p];
BSR_SIMD
          for (int64_t e = base; e < base + hw; ++e) g1[e] = gid[e] * scale;
          const acc_t sum = grad_cond_scale_plane<scalar_t, acc_t>(gid, f1d, base, base + hw, 1);
          g2[p] = static_cast<scalar_t>(sum + (has_gc ? static_cast<acc_t>(gcd[p]) : acc_t(0)));
        } else {
BSR_SIMD
          for (int64_t e = base; e < base + hw; ++e) {
            g1[e] = gid[e] * f2d[e];
            g2[e] = (has_gc ? gcd[e] : scalar_t(0)) + gid[e] * f1d[e];
          }
        }
      }
      });
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
