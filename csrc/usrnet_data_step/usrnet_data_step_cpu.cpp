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
#include <vector>

#include "../common/call_counter.h"
#include "../common/cpu_isa.h"
#include "usrnet_data_step.h"
#include "usrnet_data_step_cpu.h"

namespace bsrops {
namespace usrnet_data_step {
namespace {

// ---- the fast passes: one task per plane (or image) and pair of LR rows {u, -u} ----
//
// The per-element functions of the header reach every bin through index maths and branches.
// Here a task copies the full-spectrum rows it reads, the s alias rows of LR row u and the s
// of its mirror row -u, into split real / imaginary scratch rows, and every loop runs over
// contiguous columns, which the compiler vectorises (float32 in the multi-ISA build of
// cpu_isa.h). The arithmetic is the header's; the bins of a task are those of the header's
// work items (u, v) and (-u, -v) for all v, so the output may again overwrite the input spectrum.

struct RowPair {
  const Geometry& g;
  int64_t u, um;  // LR rows u and -u
  bool self;      // u == -u: the s alias rows of u are closed under negation
  int64_t rows() const { return self ? g.s : 2 * g.s; }
  // spectrum row of scratch row k: alias a of u for k < s, of -u for k >= s
  int64_t row(int64_t k) const { return k < g.s ? u + k * g.h : um + (k - g.s) * g.h; }
  int64_t slot(int64_t r) const { return (r % g.h == u ? 0 : g.s) + r / g.h; }
  int64_t lr_slot(int64_t k) const { return k < g.s ? 0 : 1; }  // 0: LR row u, 1: -u
};

RowPair make_row_pair(const Geometry& g, int64_t u) {
  const int64_t um = negate(u, g.h);
  return {g, u, um, u == um};
}

// Full-spectrum rows of the pair from a half spectrum (H, Wh), into re / im (rows x W).
template <typename T>
BSR_INLINE void load_full_rows(const RowPair& t, const T* half, T* __restrict re, T* __restrict im) {
  const Geometry& g = t.g;
  for (int64_t k = 0; k < t.rows(); ++k) {
    const int64_t r = t.row(k);
    const T* __restrict src = half + 2 * r * g.Wh;
    const T* __restrict mirror = half + 2 * negate(r, g.H) * g.Wh;
    T* __restrict dre = re + k * g.W;
    T* __restrict dim = im + k * g.W;
    for (int64_t q = 0; q < g.Wh; ++q) {
      dre[q] = src[2 * q];
      dim[q] = src[2 * q + 1];
    }
    for (int64_t q = g.Wh; q < g.W; ++q) {
      dre[q] = mirror[2 * (g.W - q)];
      dim[q] = -mirror[2 * (g.W - q) + 1];
    }
  }
}

// alias_mean of the header for every v of the LR row of scratch rows [first, first + s):
// out[v] = mean over the aliases of FB * X / (F2B_mean + alpha), X = P + alpha Z (kRhs) or Z.
template <bool kRhs, typename T>
BSR_INLINE void row_means(const RowPair& t, int64_t first, const T* fb, const T* fbfy, const T* re, const T* im, T alpha,
               const T* w_mean_row, T* __restrict out_re, T* __restrict out_im) {
  const Geometry& g = t.g;
  std::fill(out_re, out_re + g.w, T(0));
  std::fill(out_im, out_im + g.w, T(0));
  for (int64_t k = first; k < first + g.s; ++k) {
    const int64_t r = t.row(k);
    for (int64_t q0 = 0; q0 < g.W; q0 += g.w) {
      const T* __restrict fbq = fb + 2 * (r * g.W + q0);
      const T* __restrict pq = fbfy + 2 * (r * g.W + q0);
      const T* __restrict xre = re + k * g.W + q0;
      const T* __restrict xim = im + k * g.W + q0;
      for (int64_t v = 0; v < g.w; ++v) {
        const T xr = kRhs ? pq[2 * v] + alpha * xre[v] : xre[v];
        const T xi = kRhs ? pq[2 * v + 1] + alpha * xim[v] : xim[v];
        out_re[v] += fbq[2 * v] * xr - fbq[2 * v + 1] * xi;
        out_im[v] += fbq[2 * v] * xi + fbq[2 * v + 1] * xr;
      }
    }
  }
  for (int64_t v = 0; v < g.w; ++v) {
    const T d = T(1) / (T(g.s * g.s) * (w_mean_row[v] + alpha));
    out_re[v] *= d;
    out_im[v] *= d;
  }
}

// Half-spectrum row r of the Hermitian part of X, given the full rows a (row r) and b (row -r).
template <typename T>
BSR_INLINE void store_hermitian_row(const Geometry& g, T* half, int64_t r, const T* a_re, const T* a_im,
                                    const T* b_re, const T* b_im) {
  T* __restrict out = half + 2 * r * g.Wh;
  out[0] = T(0.5) * (a_re[0] + b_re[0]);
  out[1] = T(0.5) * (a_im[0] - b_im[0]);
  for (int64_t q = 1; q < g.Wh; ++q) {
    out[2 * q] = T(0.5) * (a_re[q] + b_re[g.W - q]);
    out[2 * q + 1] = T(0.5) * (a_im[q] - b_im[g.W - q]);
  }
}

// Half-spectrum rows r and rm = -r of the Hermitian part of X, given full rows a (row r) and b (row rm).
template <typename T>
BSR_INLINE void store_hermitian_rows(const Geometry& g, T* half, int64_t r, int64_t rm, const T* a_re,
                                     const T* a_im, const T* b_re, const T* b_im) {
  store_hermitian_row(g, half, r, a_re, a_im, b_re, b_im);
  if (rm != r) store_hermitian_row(g, half, rm, b_re, b_im, a_re, a_im);
}

// Calls visit(k, km) for every pair of scratch rows {row k, row km = -row k}, k an alias row of u.
template <typename Visit>
BSR_INLINE void for_each_mirror_row(const RowPair& t, Visit visit) {
  for (int64_t k = 0; k < t.g.s; ++k) {
    const int64_t r = t.row(k), rm = negate(r, t.g.H);
    if (t.self && rm < r) continue;
    visit(k, t.slot(rm));
  }
}

// Task (plane, u) of the forward: replaces the half rows of the pair by those of x's spectrum.
template <typename T>
BSR_INLINE void solve_rows(const Geometry& g, T* half, const T* fb, const T* fbfy, const T* w_mean, T alpha, int64_t u,
                T* scratch) {
  const RowPair t = make_row_pair(g, u);
  T *zre = scratch, *zim = zre + 2 * g.s * g.W;
  T *qre = zim + 2 * g.s * g.W, *qim = qre + 2 * g.w;  // Q of LR rows u ([0, w)) and -u ([w, 2w))
  T* fx = qim + 2 * g.w;                                 // two full rows, re and im
  load_full_rows(t, half, zre, zim);
  row_means<true>(t, 0, fb, fbfy, zre, zim, alpha, w_mean + t.u * g.w, qre, qim);
  if (!t.self) row_means<true>(t, g.s, fb, fbfy, zre, zim, alpha, w_mean + t.um * g.w, qre + g.w, qim + g.w);
  const T inv_alpha = T(1) / alpha;
  auto fx_row = [&](int64_t k, T* __restrict out_re, T* __restrict out_im) {
    const int64_t r = t.row(k), lr = t.self ? 0 : t.lr_slot(k);
    const T *qr = qre + lr * g.w, *qi = qim + lr * g.w;
    for (int64_t q0 = 0; q0 < g.W; q0 += g.w) {
      const T* __restrict fbq = fb + 2 * (r * g.W + q0);
      const T* __restrict pq = fbfy + 2 * (r * g.W + q0);
      const T *zr = zre + k * g.W + q0, *zi = zim + k * g.W + q0;
      for (int64_t v = 0; v < g.w; ++v) {
        const T fr = fbq[2 * v], fi = fbq[2 * v + 1];
        out_re[q0 + v] = (pq[2 * v] + alpha * zr[v] - (fr * qr[v] + fi * qi[v])) * inv_alpha;
        out_im[q0 + v] = (pq[2 * v + 1] + alpha * zi[v] - (fr * qi[v] - fi * qr[v])) * inv_alpha;
      }
    }
  };
  for_each_mirror_row(t, [&](int64_t k, int64_t km) {
    T *a_re = fx, *a_im = fx + g.W, *b_re = fx + 2 * g.W, *b_im = fx + 3 * g.W;
    fx_row(k, a_re, a_im);
    fx_row(km, b_re, b_im);
    store_hermitian_rows(g, half, t.row(k), t.row(km), a_re, a_im, b_re, b_im);
  });
}

int64_t solve_scratch(const Geometry& g) { return 4 * g.s * g.W + 4 * g.w + 4 * g.W; }

// Task (image n, u) of the backward, summing over the channels; see solve_backward_element.
template <typename T>
BSR_INLINE void solve_backward_rows(const Geometry& g, const T* grad_half, const T* fz_half, const T* fb, const T* fbfy,
                         const T* f2b_mean, const T* alpha, const Grads<T>& out, int64_t n, int64_t u, T* scratch) {
  const RowPair t = make_row_pair(g, u);
  const int64_t plane = g.H * g.W, half_plane = g.H * g.Wh, rows = 2 * g.s * g.W;
  T *zre = scratch, *zim = zre + rows, *gre = zim + rows, *gim = gre + rows;
  T *qre = gim + rows, *qim = qre + 2 * g.w, *tre = qim + 2 * g.w, *tim = tre + 2 * g.w;
  T *grad_w = tim + 2 * g.w, *alpha_lanes = grad_w + 2 * g.w;  // per-v sums (vectorisable, unlike one scalar)
  T* b = alpha_lanes + g.w;                                       // two full rows of B, re and im
  const T a = alpha[n], inv_alpha = T(1) / a, scale = T(1) / (a * T(plane)), aliases = T(g.s * g.s);
  const T* w_mean = f2b_mean + n * g.h * g.w;
  const T* fbn = fb + 2 * n * plane;
  // Q (and so z's spectrum) only enters grad_FB, grad_F2B_mean and grad_alpha; grad_FBFy and grad_z need T alone
  const bool need_q = out.grad_fb || out.grad_f2b_mean || out.alpha_partial;
  std::fill(grad_w, grad_w + 3 * g.w, T(0));
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t nc = n * g.C + c;
    const T* p = fbfy + 2 * nc * plane;
    if (need_q) load_full_rows(t, fz_half + 2 * nc * half_plane, zre, zim);
    load_full_rows(t, grad_half + 2 * nc * half_plane, gre, gim);
    for (int64_t lr = 0; lr < (t.self ? 1 : 2); ++lr) {
      const int64_t first = lr * g.s, o = lr * g.w;
      const T* w_row = w_mean + (lr == 0 ? t.u : t.um) * g.w;
      row_means<false>(t, first, fbn, p, gre, gim, a, w_row, tre + o, tim + o);
      if (!need_q) continue;
      row_means<true>(t, first, fbn, p, zre, zim, a, w_row, qre + o, qim + o);
      for (int64_t v = 0; v < g.w; ++v) grad_w[o + v] += aliases * (qre[o + v] * tre[o + v] + qim[o + v] * tim[o + v]);
    }
    // B of scratch row k into (b_re, b_im), with its shares of grad_FB, grad_FBFy and grad_alpha
    auto bin_row = [&](int64_t k, T* __restrict b_re, T* __restrict b_im) {
      const int64_t r = t.row(k), o = t.self ? 0 : t.lr_slot(k) * g.w;
      const T *qr = qre + o, *qi = qim + o, *tr = tre + o, *ti = tim + o;
      for (int64_t q0 = 0; q0 < g.W; q0 += g.w) {
        const int64_t i = r * g.W + q0;
        const T* __restrict fbq = fbn + 2 * i;
        const T* __restrict pq = p + 2 * i;
        T* __restrict gfb = out.grad_fb ? out.grad_fb + 2 * (n * plane + i) : nullptr;
        T* __restrict gp = out.grad_fbfy ? out.grad_fbfy + 2 * (nc * plane + i) : nullptr;
        const T *zr = zre + k * g.W + q0, *zi = zim + k * g.W + q0;
        const T *gr = gre + k * g.W + q0, *gi = gim + k * g.W + q0;
        for (int64_t v = 0; v < g.w; ++v) {
          const T fr = fbq[2 * v], fi = fbq[2 * v + 1];
          const T rr = pq[2 * v] + a * zr[v], ri = pq[2 * v + 1] + a * zi[v];
          const T br = gr[v] - (fr * tr[v] + fi * ti[v]), bi = gi[v] - (fr * ti[v] - fi * tr[v]);
          b_re[q0 + v] = br;
          b_im[q0 + v] = bi;
          if (gfb) {
            const T sr = -(qr[v] * gr[v] + qi[v] * gi[v] + tr[v] * rr + ti[v] * ri) * scale;
            const T si = -(qi[v] * gr[v] - qr[v] * gi[v] + ti[v] * rr - tr[v] * ri) * scale;
            gfb[2 * v] = c == 0 ? sr : gfb[2 * v] + sr;
            gfb[2 * v + 1] = c == 0 ? si : gfb[2 * v + 1] + si;
          }
          if (gp) {
            gp[2 * v] = br * scale;
            gp[2 * v + 1] = bi * scale;
          }
          if (out.alpha_partial) {
            const T xr = (rr - (fr * qr[v] + fi * qi[v])) * inv_alpha;
            const T xi = (ri - (fr * qi[v] - fi * qr[v])) * inv_alpha;
            alpha_lanes[v] += zr[v] * br + zi[v] * bi - (xr * gr[v] + xi * gi[v]);
          }
        }
      }
    };
    for_each_mirror_row(t, [&](int64_t k, int64_t km) {
      T *a_re = b, *a_im = b + g.W, *b_re = b + 2 * g.W, *b_im = b + 3 * g.W;
      bin_row(k, a_re, a_im);
      if (km != k) bin_row(km, b_re, b_im);
      if (out.grad_z_half)
        store_hermitian_rows(g, out.grad_z_half + 2 * nc * half_plane, t.row(k), t.row(km), a_re, a_im,
                             km != k ? b_re : a_re, km != k ? b_im : a_im);
    });
  }
  T grad_alpha = 0;
  for (int64_t v = 0; v < g.w; ++v) grad_alpha += alpha_lanes[v];
  T grad_w_sum = 0;
  for (int64_t lr = 0; lr < (t.self ? 1 : 2); ++lr)
    for (int64_t v = 0; v < g.w; ++v) {
      grad_w_sum += grad_w[lr * g.w + v];
      if (out.grad_f2b_mean) out.grad_f2b_mean[(n * g.h + (lr == 0 ? t.u : t.um)) * g.w + v] = grad_w[lr * g.w + v] * scale;
    }
  if (out.alpha_partial) out.alpha_partial[n * g.h + u] = (grad_alpha + grad_w_sum) * scale;
}

int64_t solve_backward_scratch(const Geometry& g) { return 8 * g.s * g.W + 11 * g.w + 4 * g.W; }

// ---- the CPU ops: FFTs around one pass of the row tasks (usrnet_data_step_cpu.h) ----

at::Tensor solve_cpu(const at::Tensor& z, const at::Tensor& fb, const at::Tensor& fbfy, const at::Tensor& f2b_mean,
                     const at::Tensor& alpha, int64_t scale) {
  count_call("usrnet_solve.cpu");
  const auto pass = []<typename T>(const Geometry& g, T* spectrum, const T* fb, const T* fbfy, const T* f2b_mean,
                                   const T* alpha) {
    at::parallel_for(0, g.N * g.C * g.h, grain(g, g.w, 1), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(solve_scratch(g));
      with_best_isa<T>([&]() BSR_LAMBDA_INLINE {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t u = row % g.h, nc = row / g.h, n = nc / g.C;
          if (u <= negate(u, g.h))
            solve_rows(g, spectrum + 2 * nc * g.H * g.Wh, fb + 2 * n * g.H * g.W, fbfy + 2 * nc * g.H * g.W,
                       f2b_mean + n * g.h * g.w, alpha[n], u, scratch.data());
        }
      });
    });
  };
  return solve_on_cpu(z, fb, fbfy, f2b_mean, alpha, scale, pass);
}

SolveGrads solve_backward_cpu(const at::Tensor& grad_x, const at::Tensor& z, const at::Tensor& fb,
                              const at::Tensor& fbfy, const at::Tensor& f2b_mean, const at::Tensor& alpha,
                              int64_t scale, std::array<bool, 5> output_mask) {
  count_call("_usrnet_solve_backward.cpu");
  const auto pass = []<typename T>(const Geometry& g, const Grads<T>& out, const T* grad_half, const T* z_half,
                                   const T* fb, const T* fbfy, const T* f2b_mean, const T* alpha) {
    at::parallel_for(0, g.N * g.h, grain(g, g.w, 2 * g.C), [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(solve_backward_scratch(g));
      with_best_isa<T>([&]() BSR_LAMBDA_INLINE {
        for (int64_t row = begin; row < end; ++row)
          if (row % g.h <= negate(row % g.h, g.h))
            solve_backward_rows(g, grad_half, z_half, fb, fbfy, f2b_mean, alpha, out, row / g.h, row % g.h,
                                scratch.data());
      });
    });
  };
  return solve_backward_on_cpu(grad_x, z, fb, fbfy, f2b_mean, alpha, scale, output_mask, false, pass);
}

// ---- composites ----

// A (..., 2) real view as complex. view_as_complex needs a contiguous tensor with an even storage
// offset: a gradient that is a strided or an odd-offset view (as a caller may hand it) is copied.
at::Tensor as_complex(const at::Tensor& t) {
  const bool viewable = t.is_contiguous() && t.storage_offset() % 2 == 0;
  return at::view_as_complex(viewable ? t : t.clone(at::MemoryFormat::Contiguous));
}

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

// F(y upsampled by zero insertion) is the LR spectrum tiled s x s: as a (N, C, 1, h, 1, w) view that
// broadcasts against an HR spectrum seen as (N, C, s, h, s, w) (no tiled copy is made).
at::Tensor upsampled_spectrum(const at::Tensor& y) {
  return fft2(y).view({y.size(0), y.size(1), 1, y.size(2), 1, y.size(3)});
}

// An HR spectrum (N, [C,] H, W) as (N, C or 1, s, h, s, w), its alias blocks on their own axes.
at::Tensor alias_view(const at::Tensor& t, int64_t scale, int64_t h, int64_t w) {
  return t.view({t.size(0), t.dim() == 4 ? t.size(1) : 1, scale, h, scale, w});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> precompute(const at::Tensor& y, const at::Tensor& kernel,
                                                          int64_t scale) {
  count_call("_usrnet_precompute.composite");
  const at::Tensor kernel3 = per_image_kernel("usrnet precompute", y, kernel, scale);
  const int64_t N = y.size(0), h = y.size(2), w = y.size(3);
  const at::Tensor fb = kernel_spectrum(kernel3, scale * h, scale * w);
  // conj_physical: a lazily conjugated view loses its conj bit under torch.compile tracing
  const at::Tensor fbfy = (alias_view(at::conj_physical(fb), scale, h, w) * upsampled_spectrum(y)).view(
      {N, y.size(1), scale * h, scale * w});
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
  const int64_t N = y.size(0), h = y.size(2), w = y.size(3), H = scale * h, W = scale * w;
  const int64_t kh = kernel3.size(1), kw = kernel3.size(2);
  const at::Tensor fb = kernel_spectrum(kernel3, H, W);
  const at::Tensor g_fbfy = as_complex(grad_fbfy);
  at::Tensor grad_y = y.new_empty({0}), grad_kernel = kernel.new_empty({0});
  if (output_mask[0]) {  // FBFy = conj(FB) Fy_up: d/dFy_up = FB g, summed over the s^2 tiles; y real
    const at::Tensor g_up = fb.unsqueeze(1) * g_fbfy;
    const at::Tensor g_lr = alias_view(g_up, scale, h, w).sum({2, 4});
    grad_y = at::real(ifft2_unscaled(g_lr)).contiguous();
  }
  if (output_mask[1]) {  // FB = fft2(otf): the three paths into FB, then the adjoint of p2o
    const at::Tensor via_fbfy = upsampled_spectrum(y) * alias_view(at::conj_physical(g_fbfy), scale, h, w);
    const at::Tensor g_fb = as_complex(grad_fb) + via_fbfy.sum(1).view({N, H, W}) +
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
