// Host side of usrnet_solve's two CPU kernels, the fast row passes (usrnet_data_step_cpu.cpp)
// and the cpu_shared loops over the per-element functions (usrnet_data_step_cpu_shared.cpp):
// the checks, the FFTs and the outputs around one pass over the spectra, which is all they
// differ in.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "usrnet_data_step.h"

namespace bsrops {
namespace usrnet_data_step {

// The alpha policy of every backend: finite and > 0. On the CPU a ValueError (no device to keep
// asynchronous); the CUDA and Triton kernels assert it on the device.
inline void check_alpha_values(const char* op, const at::Tensor& alpha) {
  const at::Tensor values = alpha.detach().to(at::kDouble).contiguous();
  const double* a = values.const_data_ptr<double>();
  for (int64_t n = 0; n < values.numel(); ++n)
    TORCH_CHECK_VALUE(std::isfinite(a[n]) && a[n] > 0, op, ": alpha must be finite and > 0, got ", a[n],
                      " for sample ", n);
}

// Work items per parallel chunk: ~64k complex multiply-adds, whatever the shape.
inline int64_t grain(const Geometry& g, int64_t items_per_row, int64_t planes) {
  const int64_t work = std::max<int64_t>(1, items_per_row * planes * g.s * g.s * 8);
  return std::max<int64_t>(1, (int64_t(1) << 16) / work);
}

// irfft2 of half spectra (N, C, H, Wh) complex to (N, C, H, W). torch's c2r holds two spectrum-sized
// temporaries besides its output (the inverse along H, then a copy the c2r consumes), so a spectrum of more
// than 2 * kInverseGroupBytes is inverted kInverseGroupBytes' worth of planes at a time into the output: the
// temporaries stay within about 3 * kInverseGroupBytes at the cost of one copy of each group's result.
constexpr int64_t kInverseGroupBytes = int64_t(4) << 20;

inline at::Tensor inverse_half_spectra(const at::Tensor& spectrum, int64_t H, int64_t W) {
  const int64_t bytes = spectrum.numel() * spectrum.element_size();
  if (bytes <= 2 * kInverseGroupBytes) return at::fft_irfft2(spectrum, at::IntArrayRef({H, W}));
  const int64_t planes = spectrum.size(0) * spectrum.size(1);
  const int64_t group = std::max<int64_t>(1, kInverseGroupBytes / (bytes / planes));
  const at::Tensor source = spectrum.flatten(0, 1);
  at::Tensor out = at::empty({planes, H, W}, source.options().dtype(c10::toRealValueType(source.scalar_type())));
  for (int64_t p0 = 0; p0 < planes; p0 += group) {
    const int64_t count = std::min(group, planes - p0);
    at::Tensor slice = out.narrow(0, p0, count);
    at::fft_irfft2_out(slice, source.narrow(0, p0, count), at::IntArrayRef({H, W}));
  }
  return out.view({spectrum.size(0), spectrum.size(1), H, W});
}

// FBFy for a pass: contiguous, or, for a pass that reads a broadcast FBFy (g.fbfy_step, the per-element
// functions), as fbfy_operand gives it.
inline at::Tensor fbfy_for_pass(const at::Tensor& fbfy, Geometry& g, bool reads_broadcast) {
  return reads_broadcast ? fbfy_operand(fbfy, g) : fbfy.contiguous();
}

// usrnet_solve: rfft2(z); pass(g, spectrum, fb, fbfy, f2b_mean, alpha), on scalar_t pointers into
// the half spectra (N, C, H, Wh) complex and the contiguous FB, FBFy (fbfy_for_pass), F2B_mean,
// alpha, replaces every plane's half spectrum by x's in place; irfft2.
template <typename Pass>
at::Tensor solve_on_cpu(const at::Tensor& z_in, const at::Tensor& fb_in, const at::Tensor& fbfy_in,
                        const at::Tensor& f2b_mean_in, const at::Tensor& alpha_in, int64_t scale, const Pass& pass,
                        bool reads_broadcast_fbfy = false) {
  const char* op = "usrnet_solve";
  Geometry g = make_solve_geometry(op, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale);
  check_alpha_values(op, alpha_in);
  if (z_in.numel() == 0) return at::empty_like(z_in, at::MemoryFormat::Contiguous);
  const at::Tensor fb = fb_in.contiguous(), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor fbfy = fbfy_for_pass(fbfy_in, g, reads_broadcast_fbfy);
  const at::Tensor alpha = alpha_in.contiguous();
  at::Tensor spectrum = at::view_as_real(at::fft_rfft2(z_in.contiguous()));
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_cpu", [&] {
    pass(g, spectrum.data_ptr<scalar_t>(), fb.const_data_ptr<scalar_t>(), fbfy.const_data_ptr<scalar_t>(),
         f2b_mean.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>());
  });
  return inverse_half_spectra(at::view_as_complex(spectrum), g.H, g.W);
}

// _usrnet_solve_backward (output_mask: z, FB, FBFy, F2B_mean, alpha): rfft2(grad_x) and rfft2(z);
// pass(g, out, grad_half, z_half, fb, fbfy, f2b_mean, alpha) writes the wanted outputs of `out`
// (Grads: grad_z's half spectrum over grad_half) and adds grad_alpha's shares into
// out.alpha_partial (zeros); irfft2 of grad_z's spectrum, grad_alpha the sum of the shares.
// `per_element`: the pass is the per-element one, which reads z's spectrum for every output,
// reads a broadcast FBFy (fbfy_for_pass) and leaves a share per LR frequency, (N, h, w); else
// z's spectrum is computed only for grad_FB, grad_F2B_mean and grad_alpha, and the shares are
// per LR row, (N, h).
template <typename Pass>
SolveGrads solve_backward_on_cpu(const at::Tensor& grad_x_in, const at::Tensor& z_in, const at::Tensor& fb_in,
                                 const at::Tensor& fbfy_in, const at::Tensor& f2b_mean_in, const at::Tensor& alpha_in,
                                 int64_t scale, std::array<bool, 5> output_mask, bool per_element, const Pass& pass) {
  const char* op = "usrnet_solve backward";
  SolveGrads empty;
  Geometry g = make_solve_backward_geometry(op, grad_x_in, z_in, fb_in, fbfy_in, f2b_mean_in, alpha_in, scale,
                                                  output_mask, empty);
  check_alpha_values(op, alpha_in);
  if (z_in.numel() == 0) return empty;
  const auto& [want_z, want_fb, want_fbfy, want_w, want_alpha] = output_mask;
  const at::Tensor fb = fb_in.contiguous(), f2b_mean = f2b_mean_in.contiguous();
  const at::Tensor fbfy = fbfy_for_pass(fbfy_in, g, per_element), alpha = alpha_in.contiguous();
  at::Tensor grad_spectrum = at::view_as_real(at::fft_rfft2(grad_x_in.contiguous()));
  const bool need_z_spectrum = per_element || want_fb || want_w || want_alpha;
  const at::Tensor z_spectrum =
      need_z_spectrum ? at::view_as_real(at::fft_rfft2(z_in.contiguous())) : grad_spectrum.new_empty({0});
  at::Tensor grad_fb = wanted_like(want_fb, fb), grad_fbfy = wanted_like(want_fbfy, fbfy);
  at::Tensor grad_w = wanted_like(want_w, f2b_mean);
  at::Tensor alpha_partial =
      want_alpha ? at::zeros(per_element ? f2b_mean.sizes() : at::IntArrayRef({g.N, g.h}), f2b_mean.options())
                 : f2b_mean.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(z_in.scalar_type(), "usrnet_solve_backward_cpu", [&] {
    auto ptr = [](at::Tensor& t, bool want) { return want ? t.data_ptr<scalar_t>() : nullptr; };
    const Grads<scalar_t> out{ptr(grad_spectrum, want_z), ptr(grad_fbfy, want_fbfy), ptr(grad_fb, want_fb),
                              ptr(grad_w, want_w), ptr(alpha_partial, want_alpha)};
    pass(g, out, grad_spectrum.const_data_ptr<scalar_t>(), z_spectrum.const_data_ptr<scalar_t>(),
         fb.const_data_ptr<scalar_t>(), fbfy.const_data_ptr<scalar_t>(), f2b_mean.const_data_ptr<scalar_t>(),
         alpha.const_data_ptr<scalar_t>());
  });
  at::Tensor grad_z = want_z ? inverse_half_spectra(at::view_as_complex(grad_spectrum), g.H, g.W)
                             : z_in.new_empty({0});
  at::Tensor grad_alpha =
      want_alpha ? alpha_partial.flatten(1).sum(1).view(alpha_in.sizes()) : alpha_in.new_empty({0});
  return {grad_z, grad_fb, grad_fbfy, grad_w, grad_alpha};
}

}  // namespace usrnet_data_step
}  // namespace bsrops
