// CPU kernels of bsrops::dpcb's fused part (the elementwise work around the four convolutions).
//
// The convolutions run in channels_last (oneDNN's native layout: no reorder buffers), the
// caller's tensors are usually NCHW, so the epilogue kernels read and write each tensor in its
// own layout (dpcb.h's PlaneStrides). They work on tiles of kTile pixels of one image: each
// operand is C rows of those pixels, in place for NCHW tensors and through a small [C][kTile]
// buffer for channels_last ones (gathered before, scattered after: the transpose happens in
// L1/L2, fused into the pass); with a 1 x 1 condition and every image-sized operand in
// channels_last, each pixel's C values are one run against f2's C values instead (no tiles,
// no transposes: a group of blocks chained in channels_last). The loops over rows are the
// per-element functions of dpcb.h, vectorised by the compiler (`omp simd`, reductions included; float loops also compiled for
// AVX2 / AVX-512 and picked at load time, cpu_isa.h). The LeakyReLU forward and backward work
// in place on tensors of one layout (flat loops).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <cstring>
#include <type_traits>
#include <tuple>
#include <vector>

#include "../common/call_counter.h"
#include "../common/cpu_isa.h"
#include "../common/loop_pragmas.h"
#include "dpcb.h"

namespace bsrops {
namespace dpcb {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel chunk: small tensors run inline
constexpr int64_t kTile = 256;      // pixels per tile: a [C][kTile] buffer per channels_last operand

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dpcb (cpu): ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "dpcb (cpu): ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

// The loops over one contiguous run of n elements: the LeakyReLU ones are multi-ISA functions
// (cpu_isa.h) called on long runs; the others are inlined into the tile bodies, which run in
// the multi-ISA build as a whole (with_best_isa: one dispatch per tile, not per row). They
// are plain-pointer functions so that GCC vectorises every one (written inline inside the
// parallel lambdas, a conditional load or a LeakyReLU select may stay scalar).
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
BSR_INLINE void modulate_run(const T* x, const T* f1, const T* f2, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = modulate_element(x[e], f1[e], f2[e]);
}

// out = x + f1 * f2 with one f2 for the run (the Restorer's 1 x 1 condition)
template <typename T>
BSR_INLINE void modulate_scalar_run(const T* x, const T* f1, T f2, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = modulate_element(x[e], f1[e], f2);
}

// out = a * b
template <typename T>
BSR_INLINE void multiply_run(const T* a, const T* b, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = a[e] * b[e];
}

template <typename T>
BSR_INLINE void scale_run(const T* a, T scale, T* out, int64_t n) {
  BSR_SIMD
  for (int64_t e = 0; e < n; ++e) out[e] = a[e] * scale;
}

// sum(grad_img * f1) over a run: the gradient of a 1 x 1 f2
template <typename T, typename acc_t>
BSR_INLINE acc_t grad_cond_scale_run(const T* grad_img, const T* f1, int64_t n) {
  return grad_cond_scale_plane<T, acc_t>(grad_img, 1, f1, 1, 0, n, 1);
}

// body(begin, end) over equal chunks of [0, numel)
template <typename F>
void for_chunks(int64_t numel, const F& body) {
  at::parallel_for(0, numel, kGrain, body);
}

void leaky_relu_cpu(at::Tensor& x, double slope) {
  count_call("_leaky_relu_.cpu");
  check_cpu_float(x, "x");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "_leaky_relu_: x must be dense (NCHW or channels_last)");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "leaky_relu_cpu", [&] {
    scalar_t* data = x.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    for_chunks(x.numel(), [&](int64_t begin, int64_t end) { leaky_relu_run(data + begin, end - begin, s); });
  });
}

void leaky_relu_backward_cpu(at::Tensor& grad, const at::Tensor& out_in, double slope) {
  count_call("_leaky_relu_backward_.cpu");
  check_cpu_float(grad, "grad");
  const at::Tensor out = same_order(out_in, grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "leaky_relu_backward_cpu", [&] {
    scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    for_chunks(grad.numel(), [&](int64_t begin, int64_t end) { leaky_relu_grad_run(g + begin, o + begin, end - begin, s); });
  });
}

// ---- tiles of kTile pixels of one image, every operand as C rows ----

// float: an 8 x 8 block dst[i * dst_stride + k] = src[k * src_stride + i] in registers (eight
// loads, 24 shuffles, eight stores: the classic unpack / shuffle / lane-permute sequence, written
// with GCC vector extensions so that every multi-ISA clone gets its own instructions).
typedef float float8 __attribute__((vector_size(32)));
typedef int int8 __attribute__((vector_size(32)));

BSR_INLINE float8 load8(const float* p) {
  float8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

BSR_INLINE void store8(float* p, float8 v) { std::memcpy(p, &v, sizeof(v)); }

BSR_INLINE void transpose8x8(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, const float* add) {
  float8 r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) r[k] = load8(src + k * src_stride);
  for (int k = 0; k < 8; k += 2) {  // interleave pairs of rows
    t[k] = __builtin_shuffle(r[k], r[k + 1], int8{0, 8, 1, 9, 4, 12, 5, 13});
    t[k + 1] = __builtin_shuffle(r[k], r[k + 1], int8{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int k = 0; k < 8; k += 4)  // then pairs of pairs
    for (int j = 0; j < 2; ++j) {
      u[k + 2 * j] = __builtin_shuffle(t[k + j], t[k + j + 2], int8{0, 1, 8, 9, 4, 5, 12, 13});
      u[k + 2 * j + 1] = __builtin_shuffle(t[k + j], t[k + j + 2], int8{2, 3, 10, 11, 6, 7, 14, 15});
    }
  for (int i = 0; i < 4; ++i) {  // then the 128-bit halves
    float8 low = __builtin_shuffle(u[i], u[i + 4], int8{0, 1, 2, 3, 8, 9, 10, 11});
    float8 high = __builtin_shuffle(u[i], u[i + 4], int8{4, 5, 6, 7, 12, 13, 14, 15});
    if (add) {
      low += load8(add + i * dst_stride);
      high += load8(add + (i + 4) * dst_stride);
    }
    store8(dst + i * dst_stride, low);
    store8(dst + (i + 4) * dst_stride, high);
  }
}

template <typename T>
BSR_INLINE void transpose_block(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, const T* add) {
  if constexpr (std::is_same_v<T, float>) {
    transpose8x8(src, src_stride, dst, dst_stride, add);
  } else {
    for (int64_t k = 0; k < 8; ++k)
      for (int64_t i = 0; i < 8; ++i)
        dst[i * dst_stride + k] = src[k * src_stride + i] + (add ? add[i * dst_stride + k] : T(0));
  }
}

// dst[i * dst_stride + k] = src[k * src_stride + i] (+ add[i * dst_stride + k] when add is given) for
// i < rows, k < cols: in 8 x 8 blocks, the remainders element by element. RowsOuter: finish 8 rows
// of dst before the next (8 write streams; for writing long NCHW rows), else 8 columns.
template <typename T, bool RowsOuter = false>
BSR_INLINE void transpose(const T* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t rows, int64_t cols,
                          const T* add = nullptr) {
  const int64_t full_rows = rows - rows % 8, full_cols = cols - cols % 8;
  const auto block = [&](int64_t i0, int64_t k0) BSR_LAMBDA_INLINE {
    transpose_block(src + k0 * src_stride + i0, src_stride, dst + i0 * dst_stride + k0, dst_stride,
                    add ? add + i0 * dst_stride + k0 : nullptr);
  };
  if constexpr (RowsOuter) {
    for (int64_t i0 = 0; i0 < full_rows; i0 += 8)
      for (int64_t k0 = 0; k0 < full_cols; k0 += 8) block(i0, k0);
  } else {
    for (int64_t k0 = 0; k0 < full_cols; k0 += 8)
      for (int64_t i0 = 0; i0 < full_rows; i0 += 8) block(i0, k0);
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t k = i < full_rows ? full_cols : 0; k < cols; ++k)
      dst[i * dst_stride + k] = src[k * src_stride + i] + (add ? add[i * dst_stride + k] : T(0));
}

// buffer[c * kTile + j] = the tile's pixel j, channel c (src at its first pixel), for a
// channels_last operand (channel stride 1)
template <typename T>
BSR_INLINE void gather_tile(const T* src, PlaneStrides s, int64_t channels, int64_t len, T* buffer) {
  transpose(src, s.p, buffer, kTile, channels, len);
}

template <typename T>
BSR_INLINE void scatter_tile(const T* buffer, PlaneStrides s, int64_t channels, int64_t len, T* dst) {
  transpose(buffer, kTile, dst, s.p, len, channels);
}

// An operand of a tile: C rows of `len` pixels, `stride` apart. NCHW tensors (pixel stride 1)
// are used in place; the others go through `buffer`.
template <typename T>
struct Rows {
  T* data;
  int64_t stride;
  T* row(int64_t c) const { return data + c * stride; }
};

struct Tile {
  int64_t n, p0, len, channels;
};

// (dense tensors: pixel stride 1 (NCHW) or channel stride 1 (channels_last))
template <typename T>
BSR_INLINE Rows<const T> read_rows(const T* base, PlaneStrides s, const Tile& t, T* buffer) {
  const T* first = base + offset_of(s, t.n, 0, t.p0);
  if (s.p == 1) return {first, s.c};
  gather_tile(first, s, t.channels, t.len, buffer);
  return {buffer, kTile};
}

template <typename T>
BSR_INLINE Rows<T> write_rows(T* base, PlaneStrides s, const Tile& t, T* buffer) {
  if (s.p == 1) return {base + offset_of(s, t.n, 0, t.p0), s.c};
  return {buffer, kTile};
}

// after the rows of write_rows were written: scatter them when they were buffered
template <typename T>
BSR_INLINE void finish_rows(T* base, PlaneStrides s, const Tile& t, const T* buffer) {
  if (s.p != 1) scatter_tile(buffer, s, t.channels, t.len, base + offset_of(s, t.n, 0, t.p0));
}

// body(tile, buffer) over the tiles of all images; `buffers` [C][kTile] buffers per thread. One
// channel (a flat Plane; a single-channel tensor is NCHW and channels_last at once) stages nothing,
// so its tiles are kGrain long: fewer dispatches.
template <typename T, typename F>
void for_tiles(int64_t images, int64_t channels, int64_t pixels, int64_t buffers, const F& body) {
  const int64_t tile = channels == 1 ? kGrain : kTile;
  const int64_t per_image = (pixels + tile - 1) / tile;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, channels * tile));
  at::parallel_for(0, images * per_image, grain, [&](int64_t t0, int64_t t1) {
    std::vector<T> buffer(buffers * channels * kTile);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = (t % per_image) * tile;
      body(Tile{t / per_image, p0, std::min(tile, pixels - p0), channels}, buffer.data());
    }
  });
}

// body(n, p0, p1) over the pixels [p0, p1) of image n, every pixel of every image once, in chunks of
// about kGrain elements (channels_last operands: a pixel's C values are one run).
template <typename F>
void for_pixel_runs(int64_t images, int64_t pixels, int64_t channels, const F& body) {
  const int64_t grain = std::max<int64_t>(1, kGrain / channels);
  at::parallel_for(0, images * pixels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t n = i / pixels, p0 = i % pixels, p1 = std::min(pixels, p0 + end - i);
      body(n, p0, p1);
      i += p1 - p0;
    }
  });
}

// Whether every operand is dense channels_last with C > 1 (channel stride 1): then, with a 1 x 1
// condition, each pixel is one run of C values against f2's C values, and no tile is transposed.
bool channel_runs(std::initializer_list<PlaneStrides> operands, int64_t channels) {
  bool runs = channels > 1;
  for (const PlaneStrides& s : operands) runs = runs && s.c == 1 && s.p == channels;
  return runs;
}

// body(n, buffer) per image (the reductions over an image's pixels: one thread each, fixed order).
template <typename T, typename F>
void for_images(int64_t images, int64_t channels, int64_t buffers, const F& body) {
  at::parallel_for(0, images, 1, [&](int64_t n0, int64_t n1) {
    std::vector<T> buffer(buffers * channels * kTile);
    for (int64_t n = n0; n < n1; ++n) body(n, buffer.data());
  });
}

// The (N, C, P) view of an elementwise kernel's operands: one flat row per image when they all
// have one memory order (nothing to stage, e.g. a channels_last caller), else channels x pixels.
struct Plane {
  int64_t images, channels, pixels;
  bool flat;
  // t's strides in this view (`broadcast`: a (N, C, 1, 1) tensor read for every pixel)
  PlaneStrides strides(const at::Tensor& t, bool broadcast = false) const {
    return flat ? PlaneStrides{channels * pixels, 0, 1} : plane_strides(t, broadcast);
  }
};

Plane plane_of(const at::Tensor& like, std::initializer_list<at::Tensor> operands, bool pointwise) {
  bool flat = !pointwise;
  for (const at::Tensor& t : operands) flat = flat && t.strides() == like.strides();
  const int64_t images = like.size(0), channels = like.size(1), pixels = like.size(2) * like.size(3);
  return flat ? Plane{images, 1, channels * pixels, true} : Plane{images, channels, pixels, false};
}

at::Tensor empty_in_layout(const at::Tensor& like, bool channels_last) {
  return at::empty(like.sizes(), like.options().memory_format(layout(channels_last)));
}

// out_img = x_img + f1 * f2 and out_cond = x_cond + f2, in x_img's and x_cond's layouts.
std::tuple<at::Tensor, at::Tensor> epilogue_cpu(const at::Tensor& x_in, const at::Tensor& f1_in,
                                                const at::Tensor& xc_in, const at::Tensor& f2_in) {
  count_call("_dpcb_epilogue.cpu");
  check_cpu_float(x_in, "x_img");
  const bool pointwise = check_epilogue(x_in, f1_in, xc_in, f2_in);
  const at::Tensor x = dense(x_in), f1 = dense(f1_in), xc = dense(xc_in), f2 = dense(f2_in);
  at::Tensor out = at::empty_like(x), out_cond = at::empty_like(xc);
  const Plane plane = plane_of(x, {f1, xc, f2}, pointwise);
  const int64_t images = plane.images, channels = plane.channels, pixels = plane.pixels;
  const PlaneStrides sx = plane.strides(x), sf1 = plane.strides(f1), so = plane.strides(out);
  const PlaneStrides sxc = plane.strides(xc, pointwise), sf2 = plane.strides(f2, pointwise);
  const PlaneStrides soc = plane.strides(out_cond, pointwise);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpcb_epilogue_cpu", [&] {
    const scalar_t *xd = x.data_ptr<scalar_t>(), *f1d = f1.data_ptr<scalar_t>();
    const scalar_t *xcd = xc.data_ptr<scalar_t>(), *f2d = f2.data_ptr<scalar_t>();
    scalar_t *od = out.data_ptr<scalar_t>(), *ocd = out_cond.data_ptr<scalar_t>();
    if (pointwise && channel_runs({sx, sf1, so}, channels)) {
      for_pixel_runs(images, pixels, channels, [&](int64_t n, int64_t p0, int64_t p1) {
       with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
        const scalar_t* f2n = f2d + offset_of(sf2, n, 0, 0);
        for (int64_t p = p0; p < p1; ++p)
          modulate_run(xd + offset_of(sx, n, 0, p), f1d + offset_of(sf1, n, 0, p), f2n, od + offset_of(so, n, 0, p),
                       channels);
       });
      });
    } else {
    for_tiles<scalar_t>(images, channels, pixels, 6, [&](const Tile& t, scalar_t* buffer) {
     with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
      const int64_t size = channels * kTile;
      const auto xr = read_rows(xd, sx, t, buffer), f1r = read_rows(f1d, sf1, t, buffer + size);
      const auto outr = write_rows(od, so, t, buffer + 2 * size);
      if (pointwise) {  // f2 is one value per (n, c)
        for (int64_t c = 0; c < channels; ++c)
          modulate_scalar_run(xr.row(c), f1r.row(c), f2d[offset_of(sf2, t.n, c, 0)], outr.row(c), t.len);
      } else {
        const auto f2r = read_rows(f2d, sf2, t, buffer + 3 * size), xcr = read_rows(xcd, sxc, t, buffer + 4 * size);
        const auto outcr = write_rows(ocd, soc, t, buffer + 5 * size);
        for (int64_t c = 0; c < channels; ++c) {
          modulate_run(xr.row(c), f1r.row(c), f2r.row(c), outr.row(c), t.len);
          modulate_scalar_run(xcr.row(c), f2r.row(c), scalar_t(1), outcr.row(c), t.len);  // x_cond + f2
        }
        finish_rows(ocd, soc, t, buffer + 5 * size);
      }
      finish_rows(od, so, t, buffer + 2 * size);
     });
    });
    }
    if (pointwise) {
      for (int64_t n = 0; n < images; ++n)
        for (int64_t c = 0; c < channels; ++c)
          ocd[offset_of(soc, n, c, 0)] = xcd[offset_of(sxc, n, c, 0)] + f2d[offset_of(sf2, n, c, 0)];
    }
  });
  return {out, out_cond};
}

// grad_f1 = grad_img * f2 (when f2 is given) and grad_f2 = grad_cond + grad_img * f1, summed over
// the pixels for a 1 x 1 condition (when f1 is given), in channels_last or NCHW; the other
// output is empty. Separate calls let the op free f1 before grad_f1 is allocated (peak memory).
std::tuple<at::Tensor, at::Tensor> epilogue_backward_cpu(const at::Tensor& grad_img_in, const at::Tensor& grad_cond_in,
                                                         const c10::optional<at::Tensor>& f1_in,
                                                         const c10::optional<at::Tensor>& f2_in, bool channels_last) {
  count_call("_dpcb_epilogue_backward.cpu");
  check_cpu_float(grad_img_in, "grad_img");
  const bool pointwise = check_epilogue_backward(grad_img_in, grad_cond_in, f1_in, f2_in);
  const bool has_f1 = present(f1_in), has_f2 = present(f2_in);
  const at::Tensor gi = dense(grad_img_in), gc = dense(grad_cond_in);
  const at::Tensor f1 = has_f1 ? dense(*f1_in) : at::Tensor(), f2 = has_f2 ? dense(*f2_in) : at::Tensor();
  at::Tensor grad_f1 = has_f2 ? empty_in_layout(gi, channels_last) : gi.new_empty({0});
  at::Tensor grad_f2 = has_f1 ? empty_in_layout(gc, channels_last) : gi.new_empty({0});
  std::initializer_list<at::Tensor> operands = {gc, has_f1 ? f1 : gi, has_f2 ? f2 : gi, has_f2 ? grad_f1 : gi,
                                                has_f1 ? grad_f2 : gi};
  const Plane plane = plane_of(gi, operands, pointwise);
  const int64_t images = plane.images, channels = plane.channels, pixels = plane.pixels;
  const PlaneStrides sgi = plane.strides(gi), sgc = plane.strides(gc, pointwise);
  const PlaneStrides sf1 = has_f1 ? plane.strides(f1) : sgi, sf2 = has_f2 ? plane.strides(f2, pointwise) : sgc;
  const PlaneStrides sg1 = has_f2 ? plane.strides(grad_f1) : sgi, sg2 = has_f1 ? plane.strides(grad_f2, pointwise) : sgc;
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "dpcb_epilogue_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *gid = gi.data_ptr<scalar_t>(), *gcd = gc.data_ptr<scalar_t>();
    const scalar_t *f1d = has_f1 ? f1.data_ptr<scalar_t>() : nullptr, *f2d = has_f2 ? f2.data_ptr<scalar_t>() : nullptr;
    scalar_t *g1 = has_f2 ? grad_f1.data_ptr<scalar_t>() : nullptr, *g2 = has_f1 ? grad_f2.data_ptr<scalar_t>() : nullptr;
    const int64_t size = channels * kTile;
    if (pointwise && channel_runs({sgi, has_f1 ? sf1 : sgi, has_f2 ? sg1 : sgi}, channels)) {
      // per image, pixel by pixel: grad_f1's C values and the running per-channel sums of grad_img * f1
      for_images<scalar_t>(images, channels, 0, [&](int64_t n, scalar_t*) {
        std::vector<scalar_t> sums(channels, scalar_t(0));
        with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
          for (int64_t p = 0; p < pixels; ++p) {
            const scalar_t* gip = gid + offset_of(sgi, n, 0, p);
            if (has_f2) multiply_run(gip, f2d + offset_of(sf2, n, 0, 0), g1 + offset_of(sg1, n, 0, p), channels);
            if (has_f1) modulate_run(sums.data(), gip, f1d + offset_of(sf1, n, 0, p), sums.data(), channels);
          }
        });
        if (has_f1) {
          for (int64_t c = 0; c < channels; ++c)
            g2[offset_of(sg2, n, c, 0)] = static_cast<scalar_t>(sums[c] + gcd[offset_of(sgc, n, c, 0)]);
        }
      });
      return;
    }
    if (pointwise) {  // per image: grad_f1's tiles and the per-channel sums of grad_img * f1
      for_images<scalar_t>(images, channels, 3, [&](int64_t n, scalar_t* buffer) {
        std::vector<acc_t> sums(channels, acc_t(0));
        for (int64_t p0 = 0; p0 < pixels; p0 += kTile) {
         with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
          const Tile t{n, p0, std::min(kTile, pixels - p0), channels};
          const auto gir = read_rows(gid, sgi, t, buffer);
          if (has_f2) {
            const auto g1r = write_rows(g1, sg1, t, buffer + size);
            for (int64_t c = 0; c < channels; ++c) scale_run(gir.row(c), f2d[offset_of(sf2, n, c, 0)], g1r.row(c), t.len);
            finish_rows(g1, sg1, t, buffer + size);
          }
          if (has_f1) {
            const auto f1r = read_rows(f1d, sf1, t, buffer + 2 * size);
            for (int64_t c = 0; c < channels; ++c) sums[c] += grad_cond_scale_run<scalar_t, acc_t>(gir.row(c), f1r.row(c), t.len);
          }
         });
        }
        if (has_f1) {
          for (int64_t c = 0; c < channels; ++c)
            g2[offset_of(sg2, n, c, 0)] = static_cast<scalar_t>(sums[c] + static_cast<acc_t>(gcd[offset_of(sgc, n, c, 0)]));
        }
      });
      return;
    }
    for_tiles<scalar_t>(images, channels, pixels, 5, [&](const Tile& t, scalar_t* buffer) {
     with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
      const auto gir = read_rows(gid, sgi, t, buffer);
      if (has_f2) {
        const auto f2r = read_rows(f2d, sf2, t, buffer + size);
        const auto g1r = write_rows(g1, sg1, t, buffer + 2 * size);
        for (int64_t c = 0; c < channels; ++c) multiply_run(gir.row(c), f2r.row(c), g1r.row(c), t.len);
        finish_rows(g1, sg1, t, buffer + 2 * size);
      }
      if (has_f1) {
        const auto f1r = read_rows(f1d, sf1, t, buffer + size), gcr = read_rows(gcd, sgc, t, buffer + 3 * size);
        const auto g2r = write_rows(g2, sg2, t, buffer + 4 * size);
        for (int64_t c = 0; c < channels; ++c) modulate_run(gcr.row(c), gir.row(c), f1r.row(c), g2r.row(c), t.len);
        finish_rows(g2, sg2, t, buffer + 4 * size);
      }
     });
    });
  });
  return {grad_f1, grad_f2};
}

// x (+ other) in channels_last or NCHW: the op's layout changes, fused with the residual
// gradient's add where there is one.
at::Tensor relayout_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& other_in, bool channels_last) {
  count_call("_relayout.cpu");
  check_cpu_float(x_in, "x");
  check_relayout(x_in, other_in);
  const bool has_other = present(other_in);
  const at::Tensor x = dense(x_in), other = has_other ? dense(*other_in) : x;
  at::Tensor out = empty_in_layout(x, channels_last);
  const Plane plane = plane_of(x, {other, out}, false);
  const PlaneStrides sx = plane.strides(x), sother = plane.strides(other), sout = plane.strides(out);
  const int64_t channels = plane.channels;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relayout_cpu", [&] {
    const scalar_t *xd = x.data_ptr<scalar_t>(), *od = other.data_ptr<scalar_t>();
    scalar_t* outd = out.data_ptr<scalar_t>();
    if (!plane.flat && (!has_other || other.strides() == out.strides())) {
      // a layout change (+ other in out's layout): 8 x 8 transposes straight between the tensors, 8 rows of
      // out finished before the next (each of out's cache lines written whole, the 8 x rows read stay in L1)
      for_tiles<scalar_t>(plane.images, channels, plane.pixels, 0, [&](const Tile& t, scalar_t*) {
       with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
        const scalar_t* src = xd + offset_of(sx, t.n, 0, t.p0);
        scalar_t* dst = outd + offset_of(sout, t.n, 0, t.p0);
        const scalar_t* add = has_other ? od + offset_of(sout, t.n, 0, t.p0) : nullptr;
        if (sx.p == 1)  // NCHW -> channels_last
          transpose<scalar_t, true>(src, sx.c, dst, sout.p, t.len, channels, add);
        else  // channels_last -> NCHW
          transpose<scalar_t, true>(src, sx.p, dst, sout.c, channels, t.len, add);
       });
      });
      return;
    }
    for_tiles<scalar_t>(plane.images, channels, plane.pixels, 3, [&](const Tile& t, scalar_t* buffer) {
     with_best_isa<scalar_t>([&]() BSR_LAMBDA_INLINE {
      const int64_t size = channels * kTile;
      const auto xr = read_rows(xd, sx, t, buffer);
      const auto outr = write_rows(outd, sout, t, buffer + 2 * size);
      if (has_other) {
        const auto otherr = read_rows(od, sother, t, buffer + size);
        for (int64_t c = 0; c < channels; ++c) modulate_scalar_run(xr.row(c), otherr.row(c), scalar_t(1), outr.row(c), t.len);
      } else {
        for (int64_t c = 0; c < channels; ++c) scale_run(xr.row(c), scalar_t(1), outr.row(c), t.len);
      }
      finish_rows(outd, sout, t, buffer + 2 * size);
     });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("_leaky_relu_", &leaky_relu_cpu);
  m.impl("_leaky_relu_backward_", &leaky_relu_backward_cpu);
  m.impl("_dpcb_epilogue", &epilogue_cpu);
  m.impl("_dpcb_epilogue_backward", &epilogue_backward_cpu);
  m.impl("_relayout", &relayout_cpu);
}

}  // namespace dpcb
}  // namespace bsrops
