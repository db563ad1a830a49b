// Per-element maths of bsrops::usrnet_solve (USRNet's closed-form data step), shared by
// the CPU and CUDA kernels.
//
// x = argmin ||y - (k * x)|s||^2 + alpha ||x - z||^2 (circular true convolution, upper-left
// decimation) is, per frequency of the LR grid, a rank-one solve over the s*s HR
// frequencies that alias onto it (Zhao et al. 2016; USRNet's DataNet):
//   R_j  = FBFy_j + alpha Fz_j                     j: the s^2 aliases (u + a h, v + b w)
//   Q    = mean_j(FB_j R_j) / (F2B_mean + alpha)    F2B_mean = mean_j |FB_j|^2 (hoisted)
//   FX_j = (R_j - conj(FB_j) Q) / alpha
//   x    = real(ifft2(FX))
// z and x are real, so the kernels work on half spectra (rfft2 layout, W/2 + 1 columns):
// F(z) at a column q > W/2 is the conjugate of its mirror -omega, and
// real(ifft2(FX)) = irfft2 of the half spectrum of the Hermitian part
// (FX(omega) + conj(FX(-omega))) / 2. The mirror of an alias of LR frequency w lies among
// the aliases of -w, so one work item is the pair {w, -w} of LR frequencies: it reads and
// writes only the half-spectrum bins of those two alias groups, which lets the output
// overwrite the input spectrum in place. FB and FBFy are full spectra (N, H, W) and
// (N, C, H, W), as USRNet precomputes them (op inputs, not assumed Hermitian, so read in
// full); FBFy may also be one complex value broadcast over every bin (Geometry::fbfy_step = 0),
// as the zero FBFy of USRNetDataTerm's backward solves, read from that one value.
// Complex numbers are interleaved (re, im).
//
// Backward (derivation in bsrops/ops/usrnet_data_step.py), with G = rfft-extended F(grad_x):
//   T     = mean_j(FB_j G_j) / (F2B_mean + alpha)
//   B_j   = G_j - conj(FB_j) T            grad_z = irfft2(half of the Hermitian part of B)
//   grad_FBFy_j = B_j / (alpha H W)
//   grad_FB_j   = -sum_c (Q conj(G_j) + T conj(R_j)) / (alpha H W)
//   grad_F2B_mean = sum_c s^2 Re(conj(Q) T) / (alpha H W)
//   grad_alpha    = sum_{c, j} [Re(conj(Fz_j) B_j) - Re(conj(FX_j) G_j)] / (alpha H W) + grad_F2B_mean terms
// Every function below is the whole computation of one work item, index maths included:
// the CUDA kernels decode their thread index (pair_lane) and call them, the cpu_shared
// kernels loop over the same lanes.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace bsrops {
namespace usrnet_data_step {

struct Geometry {
  int64_t N, C, h, w, s;  // LR size h x w, scale s
  int64_t H, W, Wh;       // HR size, and the columns of a half spectrum, W / 2 + 1
  int64_t fbfy_step;      // 1: FBFy is contiguous; 0: one value broadcast over every bin
};

template <typename T>
struct Cx {
  T re, im;
};

template <typename T>
C10_HOST_DEVICE inline Cx<T> cx(T re, T im) { return Cx<T>{re, im}; }
template <typename T>
C10_HOST_DEVICE inline Cx<T> operator+(Cx<T> a, Cx<T> b) { return cx(a.re + b.re, a.im + b.im); }
template <typename T>
C10_HOST_DEVICE inline Cx<T> operator-(Cx<T> a, Cx<T> b) { return cx(a.re - b.re, a.im - b.im); }
template <typename T>
C10_HOST_DEVICE inline Cx<T> operator*(Cx<T> a, T b) { return cx(a.re * b, a.im * b); }
template <typename T>
C10_HOST_DEVICE inline Cx<T> mul(Cx<T> a, Cx<T> b) { return cx(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re); }
// conj(a) * b
template <typename T>
C10_HOST_DEVICE inline Cx<T> conj_mul(Cx<T> a, Cx<T> b) { return cx(a.re * b.re + a.im * b.im, a.re * b.im - a.im * b.re); }
template <typename T>
C10_HOST_DEVICE inline Cx<T> conj(Cx<T> a) { return cx(a.re, -a.im); }
// Re(conj(a) * b)
template <typename T>
C10_HOST_DEVICE inline T dot(Cx<T> a, Cx<T> b) { return a.re * b.re + a.im * b.im; }

template <typename T>
C10_HOST_DEVICE inline Cx<T> load(const T* p, int64_t i) { return cx(p[2 * i], p[2 * i + 1]); }
template <typename T>
C10_HOST_DEVICE inline void store(T* p, int64_t i, Cx<T> v) {
  p[2 * i] = v.re;
  p[2 * i + 1] = v.im;
}

// ---- index maths ----

// The LR frequency -w of w = (u, v).
C10_HOST_DEVICE inline int64_t mirror_lr(const Geometry& g, int64_t u, int64_t v) {
  return ((g.h - u) % g.h) * g.w + (g.w - v) % g.w;
}

// The bin -(r, q) of a full spectrum (H, W), one axis at a time (no division in the hot loops).
C10_HOST_DEVICE inline int64_t negate(int64_t r, int64_t size) { return r == 0 ? 0 : size - r; }

// A work item is the pair {w, -w}, represented by its member (u, v) with v < -v (mod w), or, in a
// column equal to its mirror (v = 0, and v = w/2 for an even w), with u <= -u (mod h). Every
// representative lies in the LR columns [0, w/2]: the kernels run pair_lanes(g) lanes per plane,
// lane = u * (w/2 + 1) + v, and pair_lane tells which lanes are representatives.
C10_HOST_DEVICE inline int64_t pair_lanes(const Geometry& g) { return g.h * (g.w / 2 + 1); }

C10_HOST_DEVICE inline bool pair_lane(const Geometry& g, int64_t lane, int64_t& u, int64_t& v) {
  const int64_t columns = g.w / 2 + 1;
  u = lane / columns;
  v = lane - u * columns;
  const int64_t vm = negate(v, g.w);
  return v < vm || (v == vm && u <= negate(u, g.h));
}

// F(z) at full-spectrum bin (r, q) from a half spectrum (H, Wh).
template <typename T>
C10_HOST_DEVICE inline Cx<T> half_at(const Geometry& g, const T* half, int64_t r, int64_t q) {
  if (q < g.Wh) return load(half, r * g.Wh + q);
  return conj(load(half, negate(r, g.H) * g.Wh + (g.W - q)));
}

// Everything one (image, channel) plane needs: base pointers into interleaved complex data.
template <typename T>
struct Plane {
  const T* fb;    // FB (H, W)
  const T* fbfy;  // FBFy (H, W), or its one broadcast value (g.fbfy_step = 0)
  T alpha;        // alpha of the image
};

template <typename T>
C10_HOST_DEVICE inline Plane<T> make_plane(const Geometry& g, const T* fb, const T* fbfy, T alpha, int64_t n,
                                           int64_t c) {
  return {fb + 2 * n * g.H * g.W, fbfy + 2 * (n * g.C + c) * g.H * g.W * g.fbfy_step, alpha};
}

// FBFy at full-spectrum bin (r, q) of the plane.
template <typename T>
C10_HOST_DEVICE inline Cx<T> fbfy_at(const Plane<T>& p, const Geometry& g, int64_t r, int64_t q) {
  return load(p.fbfy, (r * g.W + q) * g.fbfy_step);
}

template <typename T>
C10_HOST_DEVICE inline Cx<T> rhs(const Plane<T>& p, const Geometry& g, const T* fz_half, int64_t r, int64_t q) {
  return fbfy_at(p, g, r, q) + half_at(g, fz_half, r, q) * p.alpha;
}

// mean_j(FB_j * X_j) / (F2B_mean + alpha) over the aliases (u + a h, v + b w) of (u, v),
// X = R (kRhs) or the gradient spectrum.
template <bool kRhs, typename T>
C10_HOST_DEVICE inline Cx<T> alias_mean(const Plane<T>& p, const Geometry& g, const T* spectrum_half, T f2b_mean,
                                        int64_t u, int64_t v) {
  Cx<T> sum = cx<T>(0, 0);
  for (int64_t r = u; r < g.H; r += g.h) {
    for (int64_t q = v; q < g.W; q += g.w) {
      const Cx<T> x = kRhs ? rhs(p, g, spectrum_half, r, q) : half_at(g, spectrum_half, r, q);
      sum = sum + mul(load(p.fb, r * g.W + q), x);
    }
  }
  return sum * (T(1) / (T(g.s * g.s) * (f2b_mean + p.alpha)));
}

// Calls visit(r, q, rm, qm) once for every unordered pair {(r, q), (rm, qm) = -(r, q)} of full-spectrum
// bins in the alias groups of (u, v) and of its mirror, with (r, q) among the aliases of (u, v).
template <typename Visit>
C10_HOST_DEVICE inline void for_each_mirror_pair(const Geometry& g, int64_t u, int64_t v, Visit visit) {
  const bool self_mirror = u * g.w + v == mirror_lr(g, u, v);
  for (int64_t r = u; r < g.H; r += g.h) {
    const int64_t rm = negate(r, g.H);
    for (int64_t q = v; q < g.W; q += g.w) {
      const int64_t qm = negate(q, g.W);
      if (self_mirror && rm * g.W + qm < r * g.W + q) continue;  // its pair was visited from the other side
      visit(r, q, rm, qm);
    }
  }
}

// Writes the half-spectrum bins of the Hermitian part of X at (r, q) and (rm, qm), X given at both.
template <typename T>
C10_HOST_DEVICE inline void store_hermitian(const Geometry& g, T* half, int64_t r, int64_t q, int64_t rm, int64_t qm,
                                            Cx<T> x, Cx<T> x_mirror) {
  const Cx<T> hermitian = (x + conj(x_mirror)) * T(0.5);
  if (q < g.Wh) store(half, r * g.Wh + q, hermitian);
  if (qm < g.Wh) store(half, rm * g.Wh + qm, conj(hermitian));
}

// ---- forward ----

// Work item (n, c, pair {(u, v), -(u, v)}), (u, v) its representative: replaces the half spectrum
// F(z) of plane (n, c) by the half spectrum of x on the bins of the two alias groups.
template <typename T>
C10_HOST_DEVICE inline void solve_element(T* spectrum, const T* fb, const T* fbfy, const T* f2b_mean,
                                          const T* alpha, const Geometry& g, int64_t n, int64_t c, int64_t u,
                                          int64_t v) {
  const int64_t lr = u * g.w + v, lr_mirror = mirror_lr(g, u, v);
  const Plane<T> p = make_plane(g, fb, fbfy, alpha[n], n, c);
  T* half = spectrum + 2 * (n * g.C + c) * g.H * g.Wh;
  const T* w_mean = f2b_mean + n * g.h * g.w;
  const Cx<T> q_own = alias_mean<true>(p, g, half, w_mean[lr], u, v);
  const Cx<T> q_mirror =
      lr == lr_mirror ? q_own : alias_mean<true>(p, g, half, w_mean[lr_mirror], lr_mirror / g.w, lr_mirror % g.w);
  const T inv_alpha = T(1) / p.alpha;
  for_each_mirror_pair(g, u, v, [&](int64_t r, int64_t q, int64_t rm, int64_t qm) {
    const Cx<T> x = (rhs(p, g, half, r, q) - conj_mul(load(p.fb, r * g.W + q), q_own)) * inv_alpha;
    const Cx<T> xm = (rhs(p, g, half, rm, qm) - conj_mul(load(p.fb, rm * g.W + qm), q_mirror)) * inv_alpha;
    store_hermitian(g, half, r, q, rm, qm, x, xm);
  });
}

// ---- backward ----

// Outputs of the backward work items; a null pointer means "not wanted".
template <typename T>
struct Grads {
  T* grad_z_half;      // (N, C, H, Wh) complex: half spectrum of grad_z (may alias the grad spectrum)
  T* grad_fbfy;        // (N, C, H, W) complex
  T* grad_fb;          // (N, H, W) complex
  T* grad_f2b_mean;    // (N, h, w)
  T* alpha_partial;    // grad_alpha wanted: shares of it, laid out as the kernel chooses (non-null pointer)
};

// Work item (n, pair {(u, v), -(u, v)}), summing over the channels what the image shares (FB, F2B_mean, alpha).
// `grad_half` is the half spectrum of grad_x, `fz_half` that of z. Returns the work item's share of
// grad_alpha[n] (0 when out.alpha_partial is null), which the caller adds up over the image's work items.
template <typename T>
C10_HOST_DEVICE inline T solve_backward_element(const T* grad_half, const T* fz_half, const T* fb, const T* fbfy,
                                                   const T* f2b_mean, const T* alpha, const Grads<T>& out,
                                                   const Geometry& g, int64_t n, int64_t u, int64_t v) {
  const int64_t lr = u * g.w + v, lr_mirror = mirror_lr(g, u, v);
  const int64_t um = lr_mirror / g.w, vm = lr_mirror % g.w;
  const bool self_mirror = lr == lr_mirror;
  const int64_t plane = g.H * g.W, half_plane = g.H * g.Wh;
  const T* w_mean = f2b_mean + n * g.h * g.w;
  const T a = alpha[n];
  const T scale = T(1) / (a * T(g.H * g.W));  // 1 / (alpha H W)
  const T inv_alpha = T(1) / a;
  const T aliases = T(g.s * g.s);
  T grad_w_own = 0, grad_w_mirror = 0, grad_alpha = 0;
  for (int64_t c = 0; c < g.C; ++c) {
    const Plane<T> p = make_plane(g, fb, fbfy, a, n, c);
    const int64_t nc = n * g.C + c;
    const T* gh = grad_half + 2 * nc * half_plane;
    const T* zh = fz_half + 2 * nc * half_plane;
    const Cx<T> q_own = alias_mean<true>(p, g, zh, w_mean[lr], u, v);
    const Cx<T> t_own = alias_mean<false>(p, g, gh, w_mean[lr], u, v);
    const Cx<T> q_mirror = self_mirror ? q_own : alias_mean<true>(p, g, zh, w_mean[lr_mirror], um, vm);
    const Cx<T> t_mirror = self_mirror ? t_own : alias_mean<false>(p, g, gh, w_mean[lr_mirror], um, vm);
    grad_w_own += aliases * dot(q_own, t_own);
    if (!self_mirror) grad_w_mirror += aliases * dot(q_mirror, t_mirror);
    // One bin of the pair: B, and its shares of grad_FB, grad_FBFy and grad_alpha.
    auto bin = [&](int64_t r, int64_t q, Cx<T> qv, Cx<T> tv) {
      const int64_t i = r * g.W + q;
      const Cx<T> fbv = load(p.fb, i), gv = half_at(g, gh, r, q), zv = half_at(g, zh, r, q);
      const Cx<T> rv = fbfy_at(p, g, r, q) + zv * a;
      const Cx<T> b = gv - conj_mul(fbv, tv);
      if (out.grad_fb) {
        const Cx<T> share = (mul(qv, conj(gv)) + mul(tv, conj(rv))) * (-scale);
        const Cx<T> before = c == 0 ? cx<T>(0, 0) : load(out.grad_fb + 2 * n * plane, i);
        store(out.grad_fb + 2 * n * plane, i, before + share);
      }
      if (out.grad_fbfy) store(out.grad_fbfy + 2 * nc * plane, i, b * scale);
      if (out.alpha_partial) {
        const Cx<T> x = (rv - conj_mul(fbv, qv)) * inv_alpha;
        grad_alpha += dot(zv, b) - dot(x, gv);
      }
      return b;
    };
    // All reads of a pair happen before its writes, so grad_z_half may overwrite grad_half.
    for_each_mirror_pair(g, u, v, [&](int64_t r, int64_t q, int64_t rm, int64_t qm) {
      const Cx<T> b = bin(r, q, q_own, t_own);
      const Cx<T> bm = (rm == r && qm == q) ? b : bin(rm, qm, q_mirror, t_mirror);
      if (out.grad_z_half) store_hermitian(g, out.grad_z_half + 2 * nc * half_plane, r, q, rm, qm, b, bm);
    });
  }
  if (out.grad_f2b_mean) {
    out.grad_f2b_mean[n * g.h * g.w + lr] = grad_w_own * scale;
    if (!self_mirror) out.grad_f2b_mean[n * g.h * g.w + lr_mirror] = grad_w_mirror * scale;
  }
  return out.alpha_partial ? (grad_alpha + grad_w_own + grad_w_mirror) * scale : T(0);
}

}  // namespace usrnet_data_step
}  // namespace bsrops

// ---- host-side shape checks (CPU and CUDA entry points) ----
// Not guarded by __CUDA_ARCH__: nvcc parses host functions in its device pass too.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <array>
#include <tuple>
#include <utility>

namespace torch {
class Library;
}

namespace bsrops {
namespace usrnet_data_step {

inline void check_float(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64 (the public functions compute float16/bfloat16 in float32), got ",
              t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " must equal z's ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but z is on ", like.device());
}

// alpha: (N,) or (N, 1, 1, 1).
inline void check_alpha_shape(const char* op, const at::Tensor& alpha, int64_t N) {
  const bool column = alpha.dim() == 4 && alpha.size(1) == 1 && alpha.size(2) == 1 && alpha.size(3) == 1;
  TORCH_CHECK((alpha.dim() == 1 || column) && alpha.size(0) == N, op, ": alpha must be (N,) or (N, 1, 1, 1) with N = ",
              N, ", got ", alpha.sizes());
}

// Sizes of z (N, C, s*h, s*w) and y (N, C, h, w) or the LR grid (h, w), checked against each other.
inline Geometry make_geometry(const char* op, const at::Tensor& z, int64_t scale, int64_t h, int64_t w) {
  TORCH_CHECK(scale >= 1, op, ": scale must be >= 1, got ", scale);
  TORCH_CHECK(z.dim() == 4, op, ": z must be (N, C, H, W), got ", z.sizes());
  Geometry g{};
  g.N = z.size(0); g.C = z.size(1); g.H = z.size(2); g.W = z.size(3);
  g.s = scale; g.h = h; g.w = w; g.Wh = g.W / 2 + 1; g.fbfy_step = 1;
  TORCH_CHECK(h >= 1 && w >= 1 && g.H == scale * h && g.W == scale * w, op, ": z must be (N, C, s*h, s*w) = (", g.N,
              ", ", g.C, ", ", scale * h, ", ", scale * w, ") for the LR size (", h, ", ", w, ") and scale ", scale,
              ", got ", z.sizes());
  return g;
}

// usrnet_solve's arguments: FB (N, H, W, 2), FBFy (N, C, H, W, 2), F2B_mean (N, h, w), alpha.
inline Geometry make_solve_geometry(const char* op, const at::Tensor& z, const at::Tensor& fb, const at::Tensor& fbfy,
                                    const at::Tensor& f2b_mean, const at::Tensor& alpha, int64_t scale) {
  TORCH_CHECK(f2b_mean.dim() == 3, op, ": F2B_mean must be (N, h, w), got ", f2b_mean.sizes());
  const Geometry g = make_geometry(op, z, scale, f2b_mean.size(1), f2b_mean.size(2));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"FB", fb}, {"FBFy", fbfy},
                                {"F2B_mean", f2b_mean}, {"alpha", alpha}})
    check_float(op, name, t, z);
  TORCH_CHECK(f2b_mean.size(0) == g.N, op, ": F2B_mean must be (N, h, w) with N = ", g.N, ", got ", f2b_mean.sizes());
  TORCH_CHECK(fb.sizes() == at::IntArrayRef({g.N, g.H, g.W, 2}), op, ": FB must be (N, H, W, 2) = (", g.N, ", ", g.H,
              ", ", g.W, ", 2), got ", fb.sizes());
  TORCH_CHECK(fbfy.sizes() == at::IntArrayRef({g.N, g.C, g.H, g.W, 2}), op, ": FBFy must be (N, C, H, W, 2) = (",
              g.N, ", ", g.C, ", ", g.H, ", ", g.W, ", 2), got ", fbfy.sizes());
  check_alpha_shape(op, alpha, g.N);
  return g;
}

// FBFy as the per-element functions read it: one complex value broadcast over every bin (strides
// (0, 0, 0, 0, 1), as USRNetDataTerm's zero FBFy on a GPU) as it is, with g.fbfy_step = 0, so its bins
// are neither materialised nor read; any other FBFy contiguous.
inline at::Tensor fbfy_operand(const at::Tensor& fbfy, Geometry& g) {
  const bool broadcast = fbfy.numel() > 0 && fbfy.strides() == at::IntArrayRef({0, 0, 0, 0, 1});
  g.fbfy_step = broadcast ? 0 : 1;
  return broadcast ? fbfy : fbfy.contiguous();
}

using SolveGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// An output of a backward op: contiguous and shaped like `like` when wanted (zero-filled if `zero`), else empty.
inline at::Tensor wanted_like(bool want, const at::Tensor& like, bool zero = false) {
  const auto format = at::MemoryFormat::Contiguous;
  return !want ? like.new_empty({0}) : zero ? at::zeros_like(like, {}, format) : at::empty_like(like, {}, format);
}

// _usrnet_solve_backward's checks; `empty` receives the result for a batch without elements.
inline Geometry make_solve_backward_geometry(const char* op, const at::Tensor& grad_x, const at::Tensor& z,
                                             const at::Tensor& fb, const at::Tensor& fbfy, const at::Tensor& f2b_mean,
                                             const at::Tensor& alpha, int64_t scale, const std::array<bool, 5>& mask,
                                             SolveGrads& empty) {
  const Geometry g = make_solve_geometry(op, z, fb, fbfy, f2b_mean, alpha, scale);
  TORCH_CHECK(grad_x.sizes() == z.sizes() && grad_x.scalar_type() == z.scalar_type(), op,
              ": grad_x must have z's shape and dtype");
  if (z.numel() == 0)
    empty = {wanted_like(mask[0], z, true), wanted_like(mask[1], fb, true), wanted_like(mask[2], fbfy, true),
             wanted_like(mask[3], f2b_mean, true), wanted_like(mask[4], alpha, true)};
  return g;
}

// Registers the composite ops (usrnet_data_step_cpu.cpp: ATen code around the dispatcher's
// usrnet_solve, the same on every device) into a TORCH_LIBRARY_IMPL block.
void register_composites(torch::Library& m);

}  // namespace usrnet_data_step
}  // namespace bsrops
