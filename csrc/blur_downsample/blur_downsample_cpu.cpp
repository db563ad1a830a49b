// CPU kernels of bsrops::blur_downsample.
//
// The fast kernels pad x once into a "phase-split" buffer xph[n, c, row, col % s, col / s]
// so that, for a fixed tap, the pixels read by consecutive outputs j are contiguous:
// the innermost loops over j are plain FMAs over contiguous memory that the compiler
// vectorises. Each kernel tap is loaded once and reused for all channels, so the
// per-pixel kernel tensor (the big operand) is read exactly once per pass.
// The backward is atomic-free: rows of grad_x (and of grad_kernel) are owned by one thread.
// The "cpu_shared" ops loop over the per-element functions of blur_downsample.h, which
// are what the CUDA kernels run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../call_counter.h"
#include "blur_downsample.h"

namespace bsrops {
namespace blur_downsample {
namespace {

struct PhaseLayout {
  int64_t before, Hp, Wp, Wq;  // padding before, padded height/width, phase row length
};

PhaseLayout phase_layout(const Geometry& g) {
  PhaseLayout p;
  p.before = pad_before(g);
  p.Hp = p.before + g.H + pad_after(g, g.H, g.Ho);
  p.Wp = p.before + g.W + pad_after(g, g.W, g.Wo);
  p.Wq = (p.Wp + g.stride - 1) / g.stride;
  return p;
}

int64_t phase_offset(const Geometry& g, const PhaseLayout& p, int64_t n, int64_t c, int64_t row, int64_t col) {
  return (((n * g.C + c) * p.Hp + row) * g.stride + col % g.stride) * p.Wq + col / g.stride;
}

// xph[n, c, r, w % s, w / s] = x at padded coordinate (r, w) (zero outside for `zeros`).
template <typename scalar_t>
at::Tensor pad_phase_split(const at::Tensor& x, const Geometry& g, const PhaseLayout& p) {
  at::Tensor xph = at::zeros({g.N, g.C, p.Hp, g.stride, p.Wq}, x.options());
  const scalar_t* src = x.data_ptr<scalar_t>();
  scalar_t* dst = xph.data_ptr<scalar_t>();
  at::parallel_for(0, g.N * g.C * p.Hp, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t r = idx % p.Hp, nc = idx / p.Hp;
      const int64_t y = source_index(r - p.before, g.H, g.padding);
      if (y < 0) continue;
      const scalar_t* row = src + (nc * g.H + y) * g.W;
      for (int64_t w = 0; w < p.Wp; ++w) {
        const int64_t col = source_index(w - p.before, g.W, g.padding);
        if (col >= 0) dst[phase_offset(g, p, nc / g.C, nc % g.C, r, w)] = row[col];
      }
    }
  });
  return xph;
}

// Forward over output rows (n, i). kPerPixel: the kernel varies along j (stride 1).
template <typename scalar_t, bool kPerPixel>
void forward_rows(const scalar_t* xph, const scalar_t* kernel, scalar_t* out, const Geometry& g,
                  const PhaseLayout& p) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.C * g.Wo);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / g.Ho, i = idx % g.Ho;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t a = 0; a < g.k; ++a) {
        const int64_t r = g.stride * i + tap_offset(g, a) + p.before;
        for (int64_t b = 0; b < g.k; ++b) {
          const int64_t w = tap_offset(g, b) + p.before;  // padded column read by output j = 0
          const scalar_t* kr = kernel + kernel_offset(g, n, a * g.k + b, i, 0);
          for (int64_t c = 0; c < g.C; ++c) {
            const scalar_t* xr = xph + phase_offset(g, p, n, c, r, w);
            acc_t* ac = acc.data() + c * g.Wo;
            if (kPerPixel) {
              for (int64_t j = 0; j < g.Wo; ++j) ac[j] += acc_t(kr[j]) * acc_t(xr[j]);
            } else {
              const acc_t kv = kr[0];
              for (int64_t j = 0; j < g.Wo; ++j) ac[j] += kv * acc_t(xr[j]);
            }
          }
        }
      }
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t j = 0; j < g.Wo; ++j)
          out[((n * g.C + c) * g.Ho + i) * g.Wo + j] = scalar_t(acc[c * g.Wo + j]);
    }
  });
}

// grad of a per-pixel kernel: grad_k[n, t, i, j] = sum_c grad_out[n, c, i, j] * x(tap t at (i, j)).
template <typename scalar_t>
void grad_kernel_per_pixel(const scalar_t* xph, const scalar_t* grad_out, scalar_t* grad_kernel, const Geometry& g,
                           const PhaseLayout& p) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.Wo);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / g.Ho, i = idx % g.Ho;
      for (int64_t a = 0; a < g.k; ++a) {
        const int64_t r = g.stride * i + tap_offset(g, a) + p.before;
        for (int64_t b = 0; b < g.k; ++b) {
          const int64_t w = tap_offset(g, b) + p.before;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t c = 0; c < g.C; ++c) {
            const scalar_t* xr = xph + phase_offset(g, p, n, c, r, w);
            const scalar_t* gr = grad_out + ((n * g.C + c) * g.Ho + i) * g.Wo;
            for (int64_t j = 0; j < g.Wo; ++j) acc[j] += acc_t(gr[j]) * acc_t(xr[j]);
          }
          scalar_t* dst = grad_kernel + kernel_offset(g, n, a * g.k + b, i, 0);
          for (int64_t j = 0; j < g.Wo; ++j) dst[j] = scalar_t(acc[j]);
        }
      }
    }
  });
}

// grad of a per-image kernel, in acc_t: grad_k[n, t] = sum over c, i, j.
template <typename scalar_t>
void grad_kernel_per_image(const scalar_t* xph, const scalar_t* grad_out, at::opmath_type<scalar_t>* grad_kernel,
                           const Geometry& g, const PhaseLayout& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.k * g.k;
  at::parallel_for(0, g.N * taps, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / taps, t = idx % taps;
      const int64_t w = tap_offset(g, t % g.k) + p.before;
      acc_t acc = 0;
      for (int64_t c = 0; c < g.C; ++c) {
        for (int64_t i = 0; i < g.Ho; ++i) {
          const int64_t r = g.stride * i + tap_offset(g, t / g.k) + p.before;
          const scalar_t* xr = xph + phase_offset(g, p, n, c, r, w);
          const scalar_t* gr = grad_out + ((n * g.C + c) * g.Ho + i) * g.Wo;
          for (int64_t j = 0; j < g.Wo; ++j) acc += acc_t(gr[j]) * acc_t(xr[j]);
        }
      }
      grad_kernel[idx] = acc;
    }
  });
}

// grad w.r.t. the phase-split padded input; each padded row r belongs to one thread.
template <typename scalar_t>
void grad_padded_rows(const scalar_t* kernel, const scalar_t* grad_out, at::opmath_type<scalar_t>* gph,
                      const Geometry& g, const PhaseLayout& p) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, g.N * p.Hp, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / p.Hp, r = idx % p.Hp;
      for (int64_t a = 0; a < g.k; ++a) {
        const int64_t rest = r - p.before - tap_offset(g, a);  // = s * i
        if (rest < 0 || rest % g.stride != 0 || rest / g.stride >= g.Ho) continue;
        const int64_t i = rest / g.stride;
        for (int64_t b = 0; b < g.k; ++b) {
          const int64_t w = tap_offset(g, b) + p.before;
          const scalar_t* kr = kernel + kernel_offset(g, n, a * g.k + b, i, 0);
          for (int64_t c = 0; c < g.C; ++c) {
            acc_t* dst = gph + phase_offset(g, p, n, c, r, w);
            const scalar_t* gr = grad_out + ((n * g.C + c) * g.Ho + i) * g.Wo;
            for (int64_t j = 0; j < g.Wo; ++j) dst[j] += acc_t(kr[j * g.ks_j]) * acc_t(gr[j]);
          }
        }
      }
    }
  });
}

// grad_x[y, x] = sum of the padded gradient over every padded coordinate reading (y, x).
template <typename scalar_t>
void fold_padding(const at::opmath_type<scalar_t>* gph, scalar_t* grad_x, const Geometry& g, const PhaseLayout& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t candidates = p.Hp - g.H + 1;  // border rows plus the row itself
  at::parallel_for(0, g.N * g.C * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(g.W);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t y = idx % g.H, nc = idx / g.H;
      std::fill(row.begin(), row.end(), acc_t(0));
      for (int64_t cand = 0; cand < candidates; ++cand) {
        const int64_t u = preimage_candidate(cand, y, g.H, p.before);
        if (source_index(u, g.H, g.padding) != y) continue;
        for (int64_t w = 0; w < p.Wp; ++w) {
          const int64_t col = source_index(w - p.before, g.W, g.padding);
          if (col >= 0) row[col] += gph[phase_offset(g, p, nc / g.C, nc % g.C, u + p.before, w)];
        }
      }
      for (int64_t xcol = 0; xcol < g.W; ++xcol) grad_x[(nc * g.H + y) * g.W + xcol] = scalar_t(row[xcol]);
    }
  });
}

at::ScalarType opmath_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// Per-image grads in acc dtype -> the kernel's layout and dtype.
at::Tensor finish_image_grad(const at::Tensor& per_image, const at::Tensor& kernel) {
  at::Tensor grad = kernel.dim() == 2 ? per_image.sum(0) : per_image;
  return grad.view(kernel.sizes()).to(kernel.scalar_type());
}

at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                       c10::string_view padding, bool flip) {
  count_call("blur_downsample.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  if (out.numel() == 0) return out;
  const PhaseLayout p = phase_layout(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_cpu", [&] {
    const at::Tensor xph = pad_phase_split<scalar_t>(x, g, p);
    if (kernel.dim() == 4)
      forward_rows<scalar_t, true>(xph.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                   g, p);
    else
      forward_rows<scalar_t, false>(xph.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                    g, p);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& kernel_in, int64_t stride,
                                                c10::string_view padding, bool flip,
                                                std::array<bool, 2> output_mask) {
  count_call("_blur_downsample_backward.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous(), grad_out = grad_out_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.N, g.C, g.Ho, g.Wo}),
              "blur_downsample backward: grad_out must be (N, C, Ho, Wo)");
  const PhaseLayout p = phase_layout(g);
  at::Tensor grad_x = output_mask[0] ? at::zeros_like(x) : x.new_empty({0});
  at::Tensor grad_kernel = output_mask[1] ? at::zeros_like(kernel) : kernel.new_empty({0});
  if (grad_out.numel() == 0) return {grad_x, grad_kernel};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = x.options().dtype(opmath_dtype(x.scalar_type()));
    if (output_mask[1]) {
      const at::Tensor xph = pad_phase_split<scalar_t>(x, g, p);
      if (kernel.dim() == 4) {
        grad_kernel_per_pixel<scalar_t>(xph.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                        grad_kernel.data_ptr<scalar_t>(), g, p);
      } else {
        at::Tensor per_image = at::empty({g.N, g.k * g.k}, acc_options);
        grad_kernel_per_image<scalar_t>(xph.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                        per_image.data_ptr<acc_t>(), g, p);
        grad_kernel = finish_image_grad(per_image, kernel);
      }
    }
    if (output_mask[0]) {
      at::Tensor gph = at::zeros({g.N, g.C, p.Hp, g.stride, p.Wq}, acc_options);
      grad_padded_rows<scalar_t>(kernel.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), gph.data_ptr<acc_t>(),
                                 g, p);
      fold_padding<scalar_t>(gph.data_ptr<acc_t>(), grad_x.data_ptr<scalar_t>(), g, p);
    }
  });
  return {grad_x, grad_kernel};
}

// ---- cpu_shared: the CUDA kernels' per-element functions, looped on the CPU ----

at::Tensor forward_shared(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                          c10::string_view padding, bool flip) {
  count_call("_blur_downsample_shared.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_shared", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xd = x.data_ptr<scalar_t>();
    const scalar_t* kd = kernel.data_ptr<scalar_t>();
    scalar_t* od = out.data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), 64, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t j = e % g.Wo, i = (e / g.Wo) % g.Ho, c = (e / (g.Wo * g.Ho)) % g.C, n = e / (g.Wo * g.Ho * g.C);
        od[e] = scalar_t(forward_element<scalar_t, acc_t>(xd, kd, g, n, c, i, j));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_shared(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                   const at::Tensor& kernel_in, int64_t stride,
                                                   c10::string_view padding, bool flip,
                                                   std::array<bool, 2> output_mask) {
  count_call("_blur_downsample_shared_backward.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous(), grad_out = grad_out_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_kernel = kernel.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "blur_downsample_backward_shared", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gd = grad_out.data_ptr<scalar_t>();
    const scalar_t* kd = kernel.data_ptr<scalar_t>();
    const scalar_t* xd = x.data_ptr<scalar_t>();
    if (output_mask[0]) {
      scalar_t* gx = grad_x.data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), 64, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t xc = e % g.W, y = (e / g.W) % g.H, c = (e / (g.W * g.H)) % g.C, n = e / (g.W * g.H * g.C);
          gx[e] = scalar_t(grad_input_element<scalar_t, acc_t>(gd, kd, g, n, c, y, xc));
        }
      });
    }
    if (output_mask[1]) {
      const bool per_pixel = kernel.dim() == 4;
      const int64_t taps = g.k * g.k, cells = per_pixel ? g.Ho * g.Wo : 1;
      at::Tensor grad = at::empty({g.N, taps, cells}, x.options().dtype(opmath_dtype(x.scalar_type())));
      acc_t* gk = grad.data_ptr<acc_t>();
      at::parallel_for(0, grad.numel(), 16, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t cell = e % cells, t = (e / cells) % taps, n = e / (cells * taps);
          const int64_t i0 = per_pixel ? cell / g.Wo : 0, j0 = per_pixel ? cell % g.Wo : 0;
          const int64_t i1 = per_pixel ? i0 + 1 : g.Ho, j1 = per_pixel ? j0 + 1 : g.Wo;
          gk[e] = grad_kernel_element<scalar_t, acc_t>(gd, xd, g, n, t, i0, i1, j0, j1);
        }
      });
      grad_kernel = per_pixel ? grad.view(kernel.sizes()).to(kernel.scalar_type()) : finish_image_grad(grad, kernel);
    }
  });
  return {grad_x, grad_kernel};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("blur_downsample", &forward_cpu);
  m.impl("_blur_downsample_backward", &backward_cpu);
  m.impl("_blur_downsample_shared", &forward_shared);
  m.impl("_blur_downsample_shared_backward", &backward_shared);
}

}  // namespace blur_downsample
}  // namespace bsrops
