// bsrops::usrnet_data_step, usrnet_solve and their helpers: the CPU kernels of the fused
// solve, and the device-generic composites around it.
//
// usrnet_solve (the per-iteration step) is rfft2(z) -> one fused pass over the alias groups
// of every pair {w, -w} of LR frequencies (solve_element of usrnet_data_step.h, in place on
// the spectrum) -> irfft2. Its backward is rfft2(grad_x), rfft2(z) -> one fused pass per
// image and pair, summing over the channels what the image shares -> irfft2. The FFTs stay
// in pocketfft; nothing else allocates an image-sized temporary. Work items touch disjoint
// bins, so the results do not depend on the thread count and nothing needs atomics.
//
// Composites of ATen ops, the same on every device (registered for CPU here and for CUDA in
// the .cu; not CompositeExplicitAutograd, so that torch.compile keeps them opaque):
//   _usrnet_precompute           FB = p2o(kernel), FBFy = conj(FB) F(y upsampled), F2B_mean
//   _usrnet_precompute_backward  its adjoint (grads of y and kernel)
//   usrnet_data_step             precompute + usrnet_solve (through the dispatcher, so the
//                                solve runs on the device's, or the chosen, backend)
//   _usrnet_data_step_backward   precompute + _usrnet_solve_backward + precompute backward
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <tuple>

#include "../call_counter.h"
#include "usrnet_data_step.h"

namespace bsrops {
namespace usrnet_data_step {
namespace {

// ---- CPU kernels of the fused solve ----

void check_alpha_values(const char* op, const at::Tensor& alpha) {
  const at::Tensor values = alpha.detach().to(at::kDouble).contiguous();
  const double* a = values.const_data_ptr<double>();
  for (int64_t n = 0; n < values.numel(); ++n)
    TORCH_CHECK(std::isfinite(a[n]) && a[n] > 0, op, ": alpha must be finite and > 0, got ", a[n], " for sample ", n);
}

// Work items per parallel chunk: ~64k complex multiply-adds, whatever the shape.
int64_t grain(const Geometry& g, int64_t items_per_row, int64_t planes) {
  const int64_t work = std::max<int64_t>(1, items_per_row * planes * g.s * g.s * 8);
  return std::max<int64_t>(1, (int64_t(1) << 16) / work);
}

at::Tensor solve_cpu(const at::Tensor& z_in, const at::Tensor& fb_in, const at::Tensor& fbfy_in,
                     const at::Tensor& f2b_mean_in, const at::Tensor& alpha_in, int64_t scale) {
  count_call("usrnet_solve.cpu");
  const char* op = "usrnet_solve";
  const Geometry g = make_solve_geometry(op, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale);
  check_alpha_values(op, alpha_in);
  if (z_in.numel() == 0) return at::empty_like(z_in, at::MemoryFormat::Contiguous);
  const at::Tensor fb = fb_in.contiguous(), fbfy = fbfy_in.contiguous(), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_cpu", [&] {
    scalar_t* spec = spectrum.data_ptr<scalar_t>();
    const scalar_t *fbd = fb.const_data_ptr<scalar_t>(), *fbfyd = fbfy.const_data_ptr<scalar_t>();
    const scalar_t *wd = f2b_mean.const_data_ptr<scalar_t>(), *ad = alpha.const_data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.C * g.h, grain(g, g.w, 1), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t u = row % g.h, nc = row / g.h;
        for (int64_t v = 0; v < g.w; ++v)
          if (is_pair_representative(g, u, v)) solve_element(spec, fbd, fbfyd, wd, ad, g, nc / g.C, nc % g.C, u, v);
      }
    });
  });
  return at::fft_irfft2(at::view_as_complex(spectrum), at::IntArrayRef({g.H, g.W}));
}

// output_mask: z, FB, FBFy, F2B_mean, alpha.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> solve_backward_cpu(
    const at::Tensor& grad_x_in, const at::Tensor& z_in, const at::Tensor& fb_in, const at::Tensor& fbfy_in,
    const at::Tensor& f2b_mean_in, const at::Tensor& alpha_in, int64_t scale, std::array<bool, 5> output_mask) {
  count_call("_usrnet_solve_backward.cpu");
  const char* op = "usrnet_solve backward";
  const Geometry g = make_solve_geometry(op, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale);
  TORCH_CHECK(grad_x_in.sizes() == z_in.sizes() && grad_x_in.scalar_type() == z_in.scalar_type(), op,
              ": grad_x must have z's shape and dtype");
  check_alpha_values(op, alpha_in);
  const auto& [want_z, want_fb, want_fbfy, want_w, want_alpha] = output_mask;
  auto empty = [](const at::Tensor& like) { return like.new_empty({0}); };
  at::Tensor grad_z = empty(z_in), grad_fb = empty(fb_in), grad_fbfy = empty(fbfy_in), grad_w = empty(f2b_mean_in);
  at::Tensor grad_alpha = empty(alpha_in);
  if (z_in.numel() == 0) {
    auto zeros = [](bool want, const at::Tensor& like) { return want ? at::zeros_like(like) : like.new_empty({0}); };
    return {zeros(want_z, z_in), zeros(want_fb, fb_in), zeros(want_fbfy, fbfy_in), zeros(want_w, f2b_mean_in),
            zeros(want_alpha, alpha_in)};
  }
  const at::Tensor fb = fb_in.contiguous(), fbfy = fbfy_in.contiguous(), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor grad_spectrum = at::view_as_real(at::fft_rfft2(grad_x_in.contiguous()));
  const at::Tensor z_spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  if (want_fb) grad_fb = at::empty_like(fb);
  if (want_fbfy) grad_fbfy = at::empty_like(fbfy);
  if (want_w) grad_w = at::empty_like(f2b_mean);
  at::Tensor alpha_partial = want_alpha ? at::empty_like(f2b_mean) : empty(f2b_mean);
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_backward_cpu", [&] {
    auto ptr = [](at::Tensor& t, bool want) { return want ? t.data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> out{ptr(grad_spectrum, want_z), ptr(grad_fbfy, want_fbfy), ptr(grad_fb, want_fb),
                              ptr(grad_w, want_w), ptr(alpha_partial, want_alpha)};
    const scalar_t *gd = grad_spectrum.const_data_ptr<scalar_t>(), *zd = z_spectrum.const_data_ptr<scalar_t>();
    const scalar_t *fbd = fb.const_data_ptr<scalar_t>(), *fbfyd = fbfy.const_data_ptr<scalar_t>();
    const scalar_t *wd = f2b_mean.const_data_ptr<scalar_t>(), *ad = alpha.const_data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.h, grain(g, g.w, 2 * g.C), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t u = row % g.h, n = row / g.h;
        for (int64_t v = 0; v < g.w; ++v)
          if (is_pair_representative(g, u, v)) solve_backward_element(gd, zd, fbd, fbfyd, wd, ad, out, g, n, u, v);
      }
    });
  });
  if (want_z) grad_z = at::fft_irfft2(at::view_as_complex(grad_spectrum), at::IntArrayRef({g.H, g.W}));
  if (want_alpha) grad_alpha = alpha_partial.sum({1, 2}).view(alpha_in.sizes());
  return {grad_z, grad_fb, grad_fbfy, grad_w, grad_alpha};
}

// ---- composites ----

// torch.fft.fft2 / ifft2 (norm "forward": unscaled), also for empty tensors, which the FFT libraries reject.
at::Tensor fft2(const at::Tensor& x) {
  if (x.numel() > 0) return at::fft_fft2(x);
  return at::zeros(x.sizes(), x.options().dtype(c10::toComplexType(c10::toRealValueType(x.scalar_type()))));
}

at::Tensor ifft2_unscaled(const at::Tensor& x) {
  return x.numel() > 0 ? at::fft_ifft2(x, c10::nullopt, {-2, -1}, "forward") : at::zeros_like(x);
}

// kernel (kh, kw) or (N, kh, kw) against y (N, C, h, w) and the HR size.
at::Tensor per_image_kernel(const char* op, const at::Tensor& y, const at::Tensor& kernel, int64_t scale) {
  TORCH_CHECK(y.dim() == 4, op, ": y must be (N, C, h, w), got ", y.sizes());
  TORCH_CHECK(scale >= 1, op, ": scale must be >= 1, got ", scale);
  check_float(op, "kernel", kernel, y);
  const int64_t N = y.size(0), H = scale * y.size(2), W = scale * y.size(3);
  TORCH_CHECK(kernel.dim() == 2 || (kernel.dim() == 3 && kernel.size(0) == N), op,
              ": kernel must be (kh, kw) or (N, kh, kw) with N = ", N, ", got ", kernel.sizes());
  const int64_t kh = kernel.size(-2), kw = kernel.size(-1);
  TORCH_CHECK(kh >= 1 && kw >= 1 && kh <= H && kw <= W, op, ": kernel (", kh, ", ", kw,
              ") must not be larger than the HR image (", H, ", ", W, ")");
  return kernel.dim() == 2 ? kernel.expand({N, kh, kw}) : kernel;
}

// USRNet's p2o: the kernel zero-padded to (H, W), its centre rolled to (0, 0), FFT -> (N, H, W) complex.
at::Tensor kernel_spectrum(const at::Tensor& kernel3, int64_t H, int64_t W) {
  const int64_t kh = kernel3.size(1), kw = kernel3.size(2);
  at::Tensor otf = at::zeros({kernel3.size(0), H, W}, kernel3.options());
  otf.slice(1, 0, kh).slice(2, 0, kw).copy_(kernel3);
  return fft2(at::roll(otf, {-(kh / 2), -(kw / 2)}, {1, 2}));
}

// F(y upsampled by zero insertion) = the LR spectrum tiled s x s -> (N, C, H, W) complex.
at::Tensor upsampled_spectrum(const at::Tensor& y, int64_t scale) {
  return fft2(y).repeat({1, 1, scale, scale});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> precompute(const at::Tensor& y, const at::Tensor& kernel,
                                                          int64_t scale) {
  count_call("_usrnet_precompute.composite");
  const at::Tensor kernel3 = per_image_kernel("usrnet precompute", y, kernel, scale);
  const int64_t N = y.size(0), h = y.size(2), w = y.size(3);
  const at::Tensor fb = kernel_spectrum(kernel3, scale * h, scale * w);
  // conj_physical: a lazily conjugated view loses its conj bit under torch.compile tracing
  const at::Tensor fbfy = at::conj_physical(fb).unsqueeze(1) * upsampled_spectrum(y, scale);
  const at::Tensor f2b_mean = at::view_as_real(fb).square().sum(-1).view({N, scale, h, scale, w}).mean({1, 3});
  return {at::view_as_real(fb), at::view_as_real(fbfy), f2b_mean};
}

// output_mask: y, kernel.
std::tuple<at::Tensor, at::Tensor> precompute_backward(const at::Tensor& grad_fb, const at::Tensor& grad_fbfy,
                                                       const at::Tensor& grad_f2b_mean, const at::Tensor& y,
                                                       const at::Tensor& kernel, int64_t scale,
                                                       std::array<bool, 2> output_mask) {
  count_call("_usrnet_precompute_backward.composite");
  const at::Tensor kernel3 = per_image_kernel("usrnet precompute backward", y, kernel, scale);
  const int64_t N = y.size(0), C = y.size(1), h = y.size(2), w = y.size(3), H = scale * h, W = scale * w;
  const int64_t kh = kernel3.size(1), kw = kernel3.size(2);
  const at::Tensor fb = kernel_spectrum(kernel3, H, W);
  const at::Tensor g_fbfy = at::view_as_complex(grad_fbfy.contiguous());
  at::Tensor grad_y = y.new_empty({0}), grad_kernel = kernel.new_empty({0});
  if (output_mask[0]) {  // FBFy = conj(FB) Fy_up: d/dFy_up = FB g, summed over the s^2 tiles; y real
    const at::Tensor g_up = fb.unsqueeze(1) * g_fbfy;
    const at::Tensor g_lr = g_up.view({N, C, scale, h, scale, w}).sum({2, 4});
    grad_y = at::real(ifft2_unscaled(g_lr)).contiguous();
  }
  if (output_mask[1]) {  // FB = fft2(otf): the three paths into FB, then the adjoint of p2o
    at::Tensor g_fb = at::view_as_complex(grad_fb.contiguous()) +
                      (upsampled_spectrum(y, scale) * at::conj_physical(g_fbfy)).sum(1) +
                      fb * (grad_f2b_mean.repeat({1, scale, scale}) * (2.0 / double(scale * scale)));
    const at::Tensor g_otf = at::real(ifft2_unscaled(g_fb));
    const at::Tensor g_kernel3 = at::roll(g_otf, {kh / 2, kw / 2}, {1, 2}).slice(1, 0, kh).slice(2, 0, kw);
    grad_kernel = (kernel.dim() == 2 ? g_kernel3.sum(0) : g_kernel3).contiguous();
  }
  return {grad_y, grad_kernel};
}

at::Tensor solve_via_dispatcher(const at::Tensor& z, const at::Tensor& fb, const at::Tensor& fbfy,
                                const at::Tensor& f2b_mean, const at::Tensor& alpha, int64_t scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("bsrops::usrnet_solve", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(z, fb, fbfy, f2b_mean, alpha, scale);
}

using SolveGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

SolveGrads solve_backward_via_dispatcher(const at::Tensor& grad_x, const at::Tensor& z, const at::Tensor& fb,
                                         const at::Tensor& fbfy, const at::Tensor& f2b_mean, const at::Tensor& alpha,
                                         int64_t scale, std::array<bool, 5> mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("bsrops::_usrnet_solve_backward", "")
                             .typed<SolveGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                               std::array<bool, 5>)>();
  return op.call(grad_x, z, fb, fbfy, f2b_mean, alpha, scale, mask);
}

void check_data_step(const at::Tensor& z, const at::Tensor& y, int64_t scale) {
  const char* op = "usrnet_data_step";
  TORCH_CHECK(y.dim() == 4, op, ": y must be (N, C, h, w), got ", y.sizes());
  check_float(op, "y", y, z);
  make_geometry(op, z, scale, y.size(2), y.size(3));
  TORCH_CHECK(y.size(0) == z.size(0) && y.size(1) == z.size(1), op, ": y must be (N, C, h, w) with (N, C) = (",
              z.size(0), ", ", z.size(1), ") of z, got ", y.sizes());
}

at::Tensor data_step(const at::Tensor& z, const at::Tensor& y, const at::Tensor& kernel, const at::Tensor& alpha,
                     int64_t scale) {
  count_call("usrnet_data_step.composite");
  check_data_step(z, y, scale);
  const auto [fb, fbfy, f2b_mean] = precompute(y, kernel, scale);
  return solve_via_dispatcher(z, fb, fbfy, f2b_mean, alpha, scale);
}

// output_mask: z, y, kernel, alpha.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> data_step_backward(
    const at::Tensor& grad_x, const at::Tensor& z, const at::Tensor& y, const at::Tensor& kernel,
    const at::Tensor& alpha, int64_t scale, std::array<bool, 4> output_mask) {
  count_call("_usrnet_data_step_backward.composite");
  check_data_step(z, y, scale);
  const auto& [want_z, want_y, want_kernel, want_alpha] = output_mask;
  const auto [fb, fbfy, f2b_mean] = precompute(y, kernel, scale);
  const auto [grad_z, grad_fb, grad_fbfy, grad_w, grad_alpha] = solve_backward_via_dispatcher(
      grad_x, z, fb, fbfy, f2b_mean, alpha, scale, {want_z, want_kernel, want_y || want_kernel, want_kernel, want_alpha});
  at::Tensor grad_y = y.new_empty({0}), grad_kernel = kernel.new_empty({0});
  if (want_y || want_kernel) {
    const at::Tensor g_fb = want_kernel ? grad_fb : at::zeros_like(fb);
    const at::Tensor g_w = want_kernel ? grad_w : at::zeros_like(f2b_mean);
    std::tie(grad_y, grad_kernel) = precompute_backward(g_fb, grad_fbfy, g_w, y, kernel, scale, {want_y, want_kernel});
  }
  return {grad_z, grad_y, grad_kernel, grad_alpha};
}

}  // namespace

void register_composites(torch::Library& m) {
  m.impl("_usrnet_precompute", &precompute);
  m.impl("_usrnet_precompute_backward", &precompute_backward);
  m.impl("usrnet_data_step", &data_step);
  m.impl("_usrnet_data_step_backward", &data_step_backward);
}

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("usrnet_solve", &solve_cpu);
  m.impl("_usrnet_solve_backward", &solve_backward_cpu);
  register_composites(m);
}

}  // namespace usrnet_data_step
}  // namespace bsrops
