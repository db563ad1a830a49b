// Per-element maths of bsrops::blur_downsample, shared by the CPU and CUDA kernels.
//
// Semantics (docs/ops.md), c = k / 2:
//   flip=false: out(i, j) = sum_{a,b} K[a, b] * x(s*i + a - c, s*j + b - c)
//   flip=true : out(i, j) = sum_{a,b} K[a, b] * x(s*i - a + c, s*j - b + c)
// Out-of-image coordinates are mapped by the padding mode (source_index).
// Every function here is the whole computation of one output element (forward_channels: of one
// output pixel in a few channels), index maths included: the CUDA kernels only decode their
// thread index and call them,
// and the CPU "cpu_shared" backend loops over them, so CPU tests check GPU maths.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>
#include <type_traits>

namespace bsrops {
namespace blur_downsample {

enum Padding : int { kReflect = 0, kSymmetric = 1, kReplicate = 2, kZeros = 3, kCircular = 4 };

// Everything the index maths needs, passed by value to kernels.
struct Geometry {
  int64_t N, C, H, W, Ho, Wo;
  int64_t k, stride;
  bool flip;
  int padding;
  // Element strides of the kernel over (n, tap, i, j): the (k, k) and (N, k, k)
  // layouts are the per-pixel layout with zero strides where they are shared.
  int64_t ks_n, ks_t, ks_i, ks_j;
};

C10_HOST_DEVICE inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Coordinate offset read by tap a (one axis): a - c, or c - a when flipped.
C10_HOST_DEVICE inline int64_t tap_offset(const Geometry& g, int64_t a) {
  const int64_t c = g.k / 2;
  return g.flip ? c - a : a - c;
}
C10_HOST_DEVICE inline int64_t min_offset(const Geometry& g) { return g.flip ? g.k / 2 - (g.k - 1) : -(g.k / 2); }
C10_HOST_DEVICE inline int64_t max_offset(const Geometry& g) { return g.flip ? g.k / 2 : g.k - 1 - g.k / 2; }

// Padding needed before and after one axis of length `size` with `out_size` outputs.
C10_HOST_DEVICE inline int64_t pad_before(const Geometry& g) { return -min_offset(g); }
C10_HOST_DEVICE inline int64_t pad_after(const Geometry& g, int64_t size, int64_t out_size) {
  const int64_t last = g.stride * (out_size - 1) + max_offset(g);
  return last > size - 1 ? last - (size - 1) : 0;
}

// Image coordinate that padded coordinate u reads, or -1 for a zero.
// Valid for |overhang| <= size (reflect: < size), which the shape checks ensure.
template <typename index_t>
C10_HOST_DEVICE inline index_t source_index(index_t u, index_t size, int padding) {
  if (u >= 0 && u < size) return u;
  switch (padding) {
    case kReflect: return u < 0 ? -u : 2 * (size - 1) - u;
    case kSymmetric: return u < 0 ? -1 - u : 2 * size - 1 - u;
    case kReplicate: return u < 0 ? 0 : size - 1;
    case kCircular: return u < 0 ? u + size : u - size;
    default: return -1;
  }
}

// Offset of K[n, tap] at output (i, j) in index_t, the type of n.
template <typename index_t>
C10_HOST_DEVICE inline index_t kernel_offset(const Geometry& g, index_t n, std::type_identity_t<index_t> tap,
                                             std::type_identity_t<index_t> i, std::type_identity_t<index_t> j) {
  return n * static_cast<index_t>(g.ks_n) + tap * static_cast<index_t>(g.ks_t) + i * static_cast<index_t>(g.ks_i) +
         j * static_cast<index_t>(g.ks_j);
}

// Channels of one forward_channels call, at most.
constexpr int kChannelBlock = 4;

// The forward functions take the kernel size and stride as template parameters K and S for the
// (k, s) pairs of dispatch_shape (constant trip counts and offsets), or K = S = 0 to read them
// from the Geometry; index_t (int32_t or int64_t) must hold every offset into x, kernel and out.

// out[n, c0 + q, i, j] for q < count <= kChannelBlock into acc[q]: each weight is read once for
// the `count` channels.
template <typename scalar_t, typename acc_t, int K = 0, int S = 0, typename index_t = int64_t>
C10_HOST_DEVICE inline void forward_channels(const scalar_t* x, const scalar_t* kernel, const Geometry& g, index_t n,
                                             index_t c0, int count, index_t i, index_t j,
                                             acc_t (&acc)[kChannelBlock]) {
  const index_t k = K > 0 ? K : static_cast<index_t>(g.k), s = K > 0 ? S : static_cast<index_t>(g.stride);
  const index_t H = static_cast<index_t>(g.H), W = static_cast<index_t>(g.W), plane = H * W;
  const index_t first = static_cast<index_t>(min_offset(g));  // offset of tap 0 (flip: of tap k - 1)
  const scalar_t* image = x + (n * static_cast<index_t>(g.C) + c0) * plane;
  for (int q = 0; q < kChannelBlock; ++q) acc[q] = 0;
  for (index_t a = 0; a < k; ++a) {
    const index_t row = source_index<index_t>(s * i + (g.flip ? first + k - 1 - a : first + a), H, g.padding);
    if (row < 0) continue;
    for (index_t b = 0; b < k; ++b) {
      const index_t col = source_index<index_t>(s * j + (g.flip ? first + k - 1 - b : first + b), W, g.padding);
      if (col < 0) continue;
      const acc_t weight = static_cast<acc_t>(kernel[kernel_offset<index_t>(g, n, a * k + b, i, j)]);
      const scalar_t* pixel = image + row * W + col;
      for (int q = 0; q < kChannelBlock; ++q) {
        if (q < count) acc[q] += weight * static_cast<acc_t>(pixel[q * plane]);
      }
    }
  }
}

// ---- forward over a window (per-image and shared kernels) ----
// A tile of kTile x kTile outputs, rows i0 .. i0 + kTile - 1 and columns j0 .., reads a window of
// window_side(k, s) x window_side(k, s) padded coordinates from (s * i0 + min_offset, s * j0 + min_offset):
// the kernels load it once (window_value) with the weights in window order (window_weight), then each
// output sums its k x k taps from it (window_output).
constexpr int kTile = 16;
C10_HOST_DEVICE constexpr int64_t window_side(int64_t k, int64_t s) { return (kTile - 1) * s + k; }

// Element r (row-major) of the window of plane x[n, c] (`plane` points at it) for the tile at (i0, j0): the
// padded value, or zero past the last coordinate any output reads (s * (Ho - 1) + max_offset, the range
// the shape checks validate; only outputs past Ho, which are not computed, would read it).
template <typename scalar_t, typename index_t>
C10_HOST_DEVICE inline scalar_t window_value(const scalar_t* plane, const Geometry& g, index_t i0, index_t j0,
                                             index_t side, index_t r) {
  const index_t s = static_cast<index_t>(g.stride), first = static_cast<index_t>(min_offset(g));
  const index_t u = s * i0 + first + r / side, v = s * j0 + first + r % side;
  const index_t last_u = s * static_cast<index_t>(g.Ho - 1) + static_cast<index_t>(max_offset(g));
  const index_t last_v = s * static_cast<index_t>(g.Wo - 1) + static_cast<index_t>(max_offset(g));
  if (u > last_u || v > last_v) return static_cast<scalar_t>(0);
  const index_t row = source_index<index_t>(u, static_cast<index_t>(g.H), g.padding);
  const index_t col = source_index<index_t>(v, static_cast<index_t>(g.W), g.padding);
  return row < 0 || col < 0 ? static_cast<scalar_t>(0) : plane[row * static_cast<index_t>(g.W) + col];
}

// Weight t = a * k + b in window order, K[n, a, b] (flip=false) or K[n, k-1-a, k-1-b] (flip=true): window
// row s * i + a (column s * j + b) holds the coordinate that tap (a, b) of output (i, j) reads.
template <typename scalar_t, typename index_t>
C10_HOST_DEVICE inline scalar_t window_weight(const scalar_t* kernel, const Geometry& g, index_t n, index_t t) {
  const index_t taps = static_cast<index_t>(g.k * g.k);
  return kernel[kernel_offset<index_t>(g, n, g.flip ? taps - 1 - t : t, 0, 0)];
}

// The output at (i0 + li, j0 + lj) from its tile's window and weights (k and s are K and S when K > 0).
template <typename scalar_t, typename acc_t, int K = 0, int S = 0>
C10_HOST_DEVICE inline acc_t window_output(const scalar_t* window, const acc_t* weights, int k_in, int s_in, int li,
                                           int lj) {
  const int k = K > 0 ? K : k_in, s = K > 0 ? S : s_in, side = static_cast<int>(window_side(k, s));
  const scalar_t* origin = window + s * (li * side + lj);
  acc_t acc = 0;
  for (int a = 0; a < k; ++a) {
    for (int b = 0; b < k; ++b) acc += weights[a * k + b] * static_cast<acc_t>(origin[a * side + b]);
  }
  return acc;
}

// d loss / d K[n, a * k + b] summed over the output pixels (i, j) in [i0, i1) x [j0, j1), for the tap
// (a, b) whose coordinate offsets are da = tap_offset(a), db = tap_offset(b).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t grad_kernel_offsets_element(const scalar_t* grad_out, const scalar_t* x,
                                                         const Geometry& g, int64_t n, int64_t da, int64_t db,
                                                         int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  acc_t acc = 0;
  for (int64_t c = 0; c < g.C; ++c) {
    const scalar_t* plane = x + (n * g.C + c) * g.H * g.W;
    const scalar_t* gplane = grad_out + (n * g.C + c) * g.Ho * g.Wo;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t row = source_index(g.stride * i + da, g.H, g.padding);
      if (row < 0) continue;
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t col = source_index(g.stride * j + db, g.W, g.padding);
        if (col < 0) continue;
        acc += static_cast<acc_t>(gplane[i * g.Wo + j]) * static_cast<acc_t>(plane[row * g.W + col]);
      }
    }
  }
  return acc;
}

// d loss / d K[n, tap] summed over the output pixels (i, j) in [i0, i1) x [j0, j1):
// one pixel for the per-pixel layout, the whole image for the shared layouts.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t grad_kernel_element(const scalar_t* grad_out, const scalar_t* x, const Geometry& g,
                                                 int64_t n, int64_t tap, int64_t i0, int64_t i1, int64_t j0,
                                                 int64_t j1) {
  return grad_kernel_offsets_element<scalar_t, acc_t>(grad_out, x, g, n, tap_offset(g, tap / g.k),
                                                      tap_offset(g, tap % g.k), i0, i1, j0, j1);
}

// Sum over the outputs that read padded coordinate (u, v): out index i and tap a
// with s*i + offset(a) = u. Gathers, so no atomics are needed.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t grad_padded_element(const scalar_t* grad_out, const scalar_t* kernel, const Geometry& g,
                                                 int64_t n, int64_t c, int64_t u, int64_t v) {
  // offset(a) = u - s*i lies in [min_offset, max_offset]
  const int64_t i_lo = floor_div(u - max_offset(g) + g.stride - 1, g.stride);
  const int64_t i_hi = floor_div(u - min_offset(g), g.stride);
  const int64_t j_lo = floor_div(v - max_offset(g) + g.stride - 1, g.stride);
  const int64_t j_hi = floor_div(v - min_offset(g), g.stride);
  const scalar_t* gplane = grad_out + (n * g.C + c) * g.Ho * g.Wo;
  const int64_t c_half = g.k / 2;
  acc_t acc = 0;
  for (int64_t i = i_lo < 0 ? 0 : i_lo; i <= i_hi && i < g.Ho; ++i) {
    const int64_t off_a = u - g.stride * i;
    const int64_t a = g.flip ? c_half - off_a : off_a + c_half;
    for (int64_t j = j_lo < 0 ? 0 : j_lo; j <= j_hi && j < g.Wo; ++j) {
      const int64_t off_b = v - g.stride * j;
      const int64_t b = g.flip ? c_half - off_b : off_b + c_half;
      acc += static_cast<acc_t>(kernel[kernel_offset(g, n, a * g.k + b, i, j)]) *
             static_cast<acc_t>(gplane[i * g.Wo + j]);
    }
  }
  return acc;
}

// Padded coordinate of candidate r along an axis: the border before the image,
// then the pixel itself, then the border after it.
C10_HOST_DEVICE inline int64_t preimage_candidate(int64_t r, int64_t y, int64_t size, int64_t before) {
  if (r < before) return r - before;
  if (r == before) return y;
  return size + (r - before - 1);
}

// True when no border coordinate of an axis of length `size` (padded by `before` and `after`) reads
// image coordinate y under any padding mode: every mode maps the border before the image onto
// [0, before] or [size - before, size) and the border after it onto [size - 1 - after, size) or
// [0, after), so coordinates at least max(before, after) + 1 from both ends are read only directly.
C10_HOST_DEVICE inline bool is_interior(int64_t y, int64_t size, int64_t before, int64_t after) {
  const int64_t margin = (before > after ? before : after) + 1;
  return y >= margin && y < size - margin;
}

// grad_x[n, c, y, x]: sum of grad_padded over every padded coordinate that reads (y, x). An interior
// row (column) is read only by itself, the candidate r = before (q = before): the loop skips the others.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t grad_input_element(const scalar_t* grad_out, const scalar_t* kernel, const Geometry& g,
                                                int64_t n, int64_t c, int64_t y, int64_t x) {
  const int64_t before = pad_before(g);
  const int64_t after_h = pad_after(g, g.H, g.Ho), after_w = pad_after(g, g.W, g.Wo);
  const bool row_inside = is_interior(y, g.H, before, after_h), col_inside = is_interior(x, g.W, before, after_w);
  const int64_t r_end = row_inside ? before + 1 : before + 1 + after_h;
  const int64_t q_end = col_inside ? before + 1 : before + 1 + after_w;
  acc_t acc = 0;
  for (int64_t r = row_inside ? before : 0; r < r_end; ++r) {
    const int64_t u = preimage_candidate(r, y, g.H, before);
    if (source_index(u, g.H, g.padding) != y) continue;
    for (int64_t q = col_inside ? before : 0; q < q_end; ++q) {
      const int64_t v = preimage_candidate(q, x, g.W, before);
      if (source_index(v, g.W, g.padding) != x) continue;
      acc += grad_padded_element<scalar_t, acc_t>(grad_out, kernel, g, n, c, u, v);
    }
  }
  return acc;
}

}  // namespace blur_downsample
}  // namespace bsrops

// ---- host-side shape checks (CPU and CUDA entry points) ----
// Not guarded by __CUDA_ARCH__: nvcc parses host functions in its device pass too,
// so the .cu entry points need these declarations in both passes.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <algorithm>
#include <climits>
#include <string_view>

namespace bsrops {
namespace blur_downsample {

inline int parse_padding(std::string_view padding) {
  if (padding == "reflect") return kReflect;
  if (padding == "symmetric") return kSymmetric;
  if (padding == "replicate") return kReplicate;
  if (padding == "zeros") return kZeros;
  if (padding == "circular") return kCircular;
  TORCH_CHECK(false, "blur_downsample: padding must be one of reflect, symmetric, replicate, zeros, circular; got '",
              std::string(padding), "'");
}

// Validates the arguments and returns the geometry for a contiguous `kernel`.
inline Geometry make_geometry(const at::Tensor& x, const at::Tensor& kernel, int64_t stride,
                              std::string_view padding, bool flip) {
  TORCH_CHECK(x.dim() == 4, "blur_downsample: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(stride >= 1, "blur_downsample: stride must be >= 1, got ", stride);
  TORCH_CHECK(kernel.scalar_type() == x.scalar_type(), "blur_downsample: kernel dtype ", kernel.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  TORCH_CHECK(kernel.device() == x.device(), "blur_downsample: kernel and x must be on one device");
  Geometry g{};
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  TORCH_CHECK(g.H >= 1 && g.W >= 1, "blur_downsample: x must have H, W >= 1, got ", x.sizes());
  // A stride >= max(H, W) leaves one output per axis (i = j = 0), whose taps do not depend on it,
  // so it runs as max(H, W): the same output, and no s * i, (u + s - 1) / s or stride-sized
  // buffer can overflow, up to a stride of 2^63 - 1.
  g.stride = std::min(stride, std::max(g.H, g.W));
  g.Ho = (g.H + g.stride - 1) / g.stride;  // ceil(H / s)
  g.Wo = (g.W + g.stride - 1) / g.stride;
  g.flip = flip;
  g.padding = parse_padding(padding);
  if (kernel.dim() == 2) {
    TORCH_CHECK(kernel.size(0) == kernel.size(1), "blur_downsample: kernel must be (k, k), got ", kernel.sizes());
    g.k = kernel.size(0);
    g.ks_n = 0; g.ks_t = 1; g.ks_i = 0; g.ks_j = 0;
  } else if (kernel.dim() == 3) {
    TORCH_CHECK(kernel.size(0) == g.N && kernel.size(1) == kernel.size(2),
                "blur_downsample: kernel must be (N, k, k) with N = ", g.N, ", got ", kernel.sizes());
    g.k = kernel.size(1);
    g.ks_n = g.k * g.k; g.ks_t = 1; g.ks_i = 0; g.ks_j = 0;
  } else {
    TORCH_CHECK(kernel.dim() == 4, "blur_downsample: kernel must be (k, k), (N, k, k) or (N, k*k, Ho, Wo), got ",
                kernel.sizes());
    int64_t k = 0;
    while ((k + 1) * (k + 1) <= kernel.size(1)) ++k;
    TORCH_CHECK(kernel.size(0) == g.N && k * k == kernel.size(1) && kernel.size(2) == g.Ho && kernel.size(3) == g.Wo,
                "blur_downsample: per-pixel kernel must be (N, k*k, Ho, Wo) = (", g.N, ", k*k, ", g.Ho, ", ", g.Wo,
                "), got ", kernel.sizes());
    g.k = k;
    g.ks_n = k * k * g.Ho * g.Wo; g.ks_t = g.Ho * g.Wo; g.ks_i = g.Wo; g.ks_j = 1;
  }
  TORCH_CHECK(g.k >= 1, "blur_downsample: kernel size must be >= 1");
  const int64_t before = pad_before(g);
  const int64_t after = std::max(pad_after(g, g.H, g.Ho), pad_after(g, g.W, g.Wo));
  const int64_t widest = std::max(before, after);
  const int64_t limit = g.padding == kReflect ? std::min(g.H, g.W) - 1 : std::min(g.H, g.W);
  TORCH_CHECK(g.padding == kZeros || g.padding == kReplicate || widest <= limit, "blur_downsample: ",
              std::string(padding), " padding of ", widest, " pixels needs H and W larger than ", widest,
              g.padding == kReflect ? "" : " - 1", "; got (H, W) = (", g.H, ", ", g.W, ") for k = ", g.k);
  return g;
}

// Whether int32_t offsets serve a call whose largest tensor has `elements` elements: they stay below
// it, and a grid-stride loop overshoots it by at most one grid of 2^24 threads.
inline bool fits_int32_offsets(int64_t elements) { return elements <= INT32_MAX - (int64_t{1} << 24); }

// f(K, S, index_t{}) with K and S std::integral_constant<int, ...> when g's (k, s) is the pair (K, S).
template <int K, int S, typename index_t, typename F>
bool run_shape_if(const Geometry& g, const F& f) {
  if (K > 0 && (g.k != K || g.stride != S)) return false;
  f(std::integral_constant<int, K>{}, std::integral_constant<int, S>{}, index_t{});
  return true;
}

// f(K, S, index_t{}): the forward kernels' (k, s) template parameters and index type, chosen alike on
// the CPU (cpu_shared) and CUDA. The (k, s) pairs of the presets: DAN's blur (21 and 11, stride 1),
// PDM's and the demo's x4 (21, 4), PDM's 2020 Track 1 x4 (11, 4), USRNet's and RealSR's x4 (25, 4);
// any other pair, and every call that needs 64-bit offsets, runs the generic K = S = 0.
template <typename F>
void dispatch_shape(const Geometry& g, bool int32, const F& f) {
  if (!int32) {
    run_shape_if<0, 0, int64_t>(g, f);
  } else if (!(run_shape_if<21, 1, int32_t>(g, f) || run_shape_if<11, 1, int32_t>(g, f) ||
               run_shape_if<21, 4, int32_t>(g, f) || run_shape_if<11, 4, int32_t>(g, f) ||
               run_shape_if<25, 4, int32_t>(g, f))) {
    run_shape_if<0, 0, int32_t>(g, f);
  }
}

// Bytes of a tile's weights (in acc_t) and window (in scalar_t), the CUDA kernel's shared memory.
inline int64_t window_bytes(const Geometry& g, int64_t scalar_size, int64_t acc_size) {
  const int64_t side = window_side(g.k, g.stride);
  return g.k * g.k * acc_size + side * side * scalar_size;
}

// Shared memory a block may use without opting in (the CUDA default).
constexpr int64_t kMaxWindowBytes = 48 * 1024;

// Whether the forward of a per-image or shared kernel runs over windows (else forward_channels):
// when its window fits kMaxWindowBytes.
inline bool uses_window(const Geometry& g, int64_t scalar_size, int64_t acc_size) {
  return g.k <= 1024 && g.stride <= 1024 && window_bytes(g, scalar_size, acc_size) <= kMaxWindowBytes;
}

// f(K, S, index_t{}, window) for the forward of x with `kernel` into `out` (scalar_t, opmath acc_t): the
// (k, s) template parameters and index type of dispatch_shape, and whether a per-image or shared kernel
// runs over windows (uses_window).
template <typename scalar_t, typename acc_t, typename F>
void dispatch_forward(const Geometry& g, const at::Tensor& x, const at::Tensor& kernel, const at::Tensor& out,
                      const F& f) {
  const bool window = kernel.dim() < 4 && uses_window(g, sizeof(scalar_t), sizeof(acc_t));
  const bool int32 = fits_int32_offsets(std::max({x.numel(), kernel.numel(), out.numel()}));
  dispatch_shape(g, int32, [&](auto K, auto S, auto index) { f(K, S, index, window); });
}

// grad_kernel from its sums per (n, tap, cell) in opmath dtype, (N, k*k, cells) with cells = Ho * Wo
// (per-pixel kernel) or 1 (per image): the kernel's shape and dtype, a shared (k, k) kernel's
// summed over N before the cast.
inline at::Tensor kernel_grad_of(const at::Tensor& grad, const at::Tensor& kernel) {
  const at::Tensor summed = kernel.dim() == 2 ? grad.sum(0) : grad;
  return summed.view(kernel.sizes()).to(kernel.scalar_type());
}

}  // namespace blur_downsample
}  // namespace bsrops
