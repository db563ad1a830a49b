// CPU kernels of bsrops::blur_downsample.
//
// Fast kernels (the "cpu" backend). With a per-pixel kernel the op is memory-bound on
// K[n, t, i, j] (k*k taps per output pixel: 29 MB at the paper shape, against 3 MB of
// image), so K and grad_K are streamed exactly once and everything else stays in cache:
//
//   * Work is split into tasks of row blocks of one image whose size depends on the
//     shapes only, never on the thread count: results are bitwise identical for any
//     number of threads, and run to run. No atomics anywhere.
//   * A task copies the padded input rows it needs into a task-local "phase-split"
//     buffer xs[c][r][col % s][col / s] (L2-resident), so that for a fixed tap the
//     pixels read by consecutive outputs j are contiguous. No image-sized temporary is
//     allocated by the forward; the backward allocates only its outputs, per-task
//     partial sums of a per-image grad_K, and, for padding that maps border rows onto
//     image rows, a side buffer of those rows.
//   * Loop order: tap row a, group of <= 12 tap columns b, output row i, tap column b.
//     A register tile of up to 3 channels x 32 outputs (two 64-byte vectors)
//     accumulates over the taps b of the group; the x rows it reads are in L1, and
//     K[n, a*k + b, i, :] over i is one sequential stream per tap (prefetched a row
//     ahead).
//   * The hot functions are compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA)
//     and the baseline and picked at load time (GCC target_clones), because extensions
//     are built for the baseline ISA. Only float32 is multi-versioned (build time);
//     float64 runs the baseline build; float16 / bfloat16 run the float32 kernels on
//     upcast copies (same results: the kernels accumulate in float32 either way).
//   * At stride 1 with a per-image or shared kernel, the forward takes another path that
//     computes a group of planes side by side (see "stride 1" below).
//   * Large outputs are advised transparent huge pages before their first write (huge_pages.h).
//
// Backward: one fused pass per block of *padded* input rows [r0, r1). For each tap row
// a, the output rows i with s*i + a' in [r0, r1) are one run, so every (t, i) of K and
// grad_K is visited by exactly one task (no halo). For each such (a, i) a task keeps
// grad_out[n, :, i, :] in registers, accumulates K[n, t, i, :] * grad_out into its own
// padded-gradient rows and writes grad_K[n, t, i, :] from its x rows; each
// padded-gradient element is summed in (a, b) order, whatever the task split. The
// padded-gradient rows are folded into grad_x by columns in the task; image rows that
// padding also reads from border rows (reflect, ...) go through the side buffer and are
// summed in a fixed order afterwards. Per-image kernels reduce grad_K into per-task
// partial sums, added in task order (two-stage, deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../common/call_counter.h"
#include "../common/cpu_isa.h"
#include "../common/huge_pages.h"
#include "../common/loop_pragmas.h"
#include "../common/simd_vec.h"
#include "blur_downsample.h"

namespace bsrops {
namespace blur_downsample {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Taps b handled per pass over the rows of a tap row a: each tap is one stream of K (and
// one of grad_K in the backward); at most 2 x 12 streams at a time stay within what the
// L2 streamer tracks (32 pages on recent Intel cores).
constexpr int64_t kTapGroup = 12;
// The streams advance by one short row per visit, so the tiles also prefetch the same
// taps this many output rows ahead.
constexpr int64_t kPrefetchRows = 1;

// Everything the fast kernels need about one call, computed once on the host.
struct Plan {
  Geometry g;
  int64_t before = 0, Hp = 0, Wp = 0, Wq = 0;
  int64_t SW = 0;              // length of one phase-split row: s * Wq
  int64_t rows = 0;            // output rows per forward task
  int64_t fwd_blocks = 0;      // forward tasks per image
  int64_t bwd_rows = 0;        // padded rows per backward task (a multiple of s)
  int64_t bwd_blocks = 0;      // backward tasks per image
  std::vector<int64_t> row_src;  // [Hp] image row read by padded row r, -1: zero
  std::vector<int64_t> col_src;  // [Wp] image column read by padded column w, -1: zero
  std::vector<int64_t> tap_pos;  // [k] padded offset of tap a: tap_offset(a) + before, in [0, k)
  std::vector<int64_t> colpos;   // [k] phase-split position of padded column tap_pos[b]
  std::vector<int64_t> border_cols, border_dst;  // padded border columns that read a pixel, and that pixel
};

Plan make_plan(const Geometry& g) {
  Plan p;
  p.g = g;
  const int64_t s = g.stride;
  p.before = pad_before(g);
  p.Hp = p.before + g.H + pad_after(g, g.H, g.Ho);
  p.Wp = p.before + g.W + pad_after(g, g.W, g.Wo);
  p.Wq = (p.Wp + s - 1) / s;
  p.SW = s * p.Wq;
  // ~2k outputs per task, blocks of equal size (the last one possibly shorter).
  const int64_t target = std::max<int64_t>(1, std::min<int64_t>(g.Ho, (2048 + g.Wo - 1) / g.Wo));
  p.fwd_blocks = (g.Ho + target - 1) / target;
  p.rows = (g.Ho + p.fwd_blocks - 1) / p.fwd_blocks;
  const int64_t bands = (p.Hp + s - 1) / s;  // s-row bands of the padded input
  const int64_t blocks = (bands + target - 1) / target;
  p.bwd_rows = s * ((bands + blocks - 1) / blocks);
  p.bwd_blocks = (p.Hp + p.bwd_rows - 1) / p.bwd_rows;
  p.row_src.resize(p.Hp);
  for (int64_t r = 0; r < p.Hp; ++r) p.row_src[r] = source_index(r - p.before, g.H, g.padding);
  p.col_src.resize(p.Wp);
  for (int64_t w = 0; w < p.Wp; ++w) {
    p.col_src[w] = source_index(w - p.before, g.W, g.padding);
    const bool inside = w >= p.before && w < p.before + g.W;
    if (!inside && p.col_src[w] >= 0) {
      p.border_cols.push_back(w);
      p.border_dst.push_back(p.col_src[w]);
    }
  }
  p.tap_pos.resize(g.k);
  p.colpos.resize(g.k);
  for (int64_t a = 0; a < g.k; ++a) {
    p.tap_pos[a] = tap_offset(g, a) + p.before;
    p.colpos[a] = (p.tap_pos[a] % s) * p.Wq + p.tap_pos[a] / s;
  }
  return p;
}

// Where the padded-gradient rows of the backward go: straight into grad_x, or through
// a side buffer when padding maps more than one padded row onto an image row.
struct RowFold {
  std::vector<int64_t> slot;       // [Hp] side-buffer row of padded row r, or -1: direct (or dropped)
  int64_t slots = 0;
  std::vector<int64_t> fix_rows;   // image rows summed from the side buffer
  std::vector<int64_t> fix_start;  // CSR into fix_slots, size fix_rows + 1
  std::vector<int64_t> fix_slots;  // slots to add, in ascending padded-row order
};

RowFold make_row_fold(const Plan& p) {
  const int64_t H = p.g.H;
  RowFold f;
  std::vector<char> shared(H, 0);
  for (int64_t r = 0; r < p.Hp; ++r) {
    const bool inside = r >= p.before && r < p.before + H;
    if (!inside && p.row_src[r] >= 0) shared[p.row_src[r]] = 1;
  }
  f.slot.assign(p.Hp, -1);
  std::vector<std::vector<int64_t>> sources(H);
  for (int64_t r = 0; r < p.Hp; ++r) {
    const int64_t y = p.row_src[r];
    if (y < 0 || !shared[y]) continue;
    f.slot[r] = f.slots++;
    sources[y].push_back(f.slot[r]);
  }
  f.fix_start.push_back(0);
  for (int64_t y = 0; y < H; ++y) {
    if (!shared[y]) continue;
    f.fix_rows.push_back(y);
    f.fix_slots.insert(f.fix_slots.end(), sources[y].begin(), sources[y].end());
    f.fix_start.push_back(static_cast<int64_t>(f.fix_slots.size()));
  }
  return f;
}

// ---- padded rows <-> phase-split rows ----

// Phase split (Split = true): dst[ph * Wq + q] = src[q * S + ph], so that each phase ph of a
// stride-S row is contiguous; Split = false is the inverse, dst[q * S + ph] = src[ph * Wq + q].
template <bool Split, int S, typename T>
BSR_INLINE void phase_permute_fixed(const T* __restrict src, T* __restrict dst, int64_t Wq) {
  for (int64_t q = 0; q < Wq; ++q) {
    BSR_UNROLL
    for (int ph = 0; ph < S; ++ph) {
      if constexpr (Split) dst[ph * Wq + q] = src[q * S + ph];
      else dst[q * S + ph] = src[ph * Wq + q];
    }
  }
}

template <bool Split, typename T>
BSR_INLINE void phase_permute(const T* src, T* dst, int64_t s, int64_t Wq) {
  switch (s) {
    case 2: phase_permute_fixed<Split, 2>(src, dst, Wq); return;
    case 3: phase_permute_fixed<Split, 3>(src, dst, Wq); return;
    case 4: phase_permute_fixed<Split, 4>(src, dst, Wq); return;
    default:
      for (int64_t ph = 0; ph < s; ++ph)
        for (int64_t q = 0; q < Wq; ++q) {
          if constexpr (Split) dst[ph * Wq + q] = src[q * s + ph];
          else dst[q * s + ph] = src[ph * Wq + q];
        }
  }
}

// Phase-split copy of padded rows [r0, r1) of image n (all channels):
// xs[(c * (r1 - r0) + r - r0) * SW + ph * Wq + q] = x at padded (r, q * s + ph).
// `lin` is a scratch row of SW elements.
template <typename scalar_t, typename acc_t>
BSR_INLINE void load_rows(const Plan& p, const scalar_t* x, int64_t n, int64_t r0, int64_t r1, acc_t* xs,
                          acc_t* __restrict lin) {
  const Geometry& g = p.g;
  const int64_t rows = r1 - r0, s = g.stride;
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t r = r0; r < r1; ++r) {
      acc_t* dst = xs + (c * rows + r - r0) * p.SW;
      const int64_t src = r < p.Hp ? p.row_src[r] : -1;
      if (src < 0) {
        std::fill(dst, dst + p.SW, acc_t(0));
        continue;
      }
      const scalar_t* __restrict xr = x + ((n * g.C + c) * g.H + src) * g.W;
      acc_t* row = s == 1 ? dst : lin;  // the padded row, linear
      for (int64_t w = 0; w < p.before; ++w) row[w] = p.col_src[w] >= 0 ? static_cast<acc_t>(xr[p.col_src[w]]) : acc_t(0);
      acc_t* __restrict mid = row + p.before;
      for (int64_t w = 0; w < g.W; ++w) mid[w] = static_cast<acc_t>(xr[w]);
      for (int64_t w = p.before + g.W; w < p.Wp; ++w)
        row[w] = p.col_src[w] >= 0 ? static_cast<acc_t>(xr[p.col_src[w]]) : acc_t(0);
      for (int64_t w = p.Wp; w < p.SW; ++w) row[w] = acc_t(0);
      if (s > 1) phase_permute<true>(lin, dst, s, p.Wq);
    }
  }
}

// ---- register tiles (of Vec<T>, 64 bytes) ----

// Forward, one output row and one tap row a, NV vectors of outputs j, CB channels:
//   acc[cc][j] += sum_b w_b(j) * x[cc][colpos[b] + j],  w_b(j) = w[b * w_tap + j] (kPixel) or w[b * w_tap].
// Channel cc of acc / x sits acc_ch / x_ch elements after channel 0.
template <int CB, int NV, bool kPixel, typename T>
BSR_INLINE void forward_tile(T* __restrict acc, int64_t acc_ch, const T* __restrict x, int64_t x_ch,
                             const int64_t* __restrict colpos, const T* __restrict w, int64_t w_tap, int64_t k,
                             int64_t pf) {
  using V = Vec<T>;
  constexpr int L = V::kLanes;
  typename V::type sum[CB][NV];
  BSR_UNROLL
  for (int cc = 0; cc < CB; ++cc) {
    BSR_UNROLL
    for (int u = 0; u < NV; ++u) sum[cc][u] = V::load(acc + cc * acc_ch + u * L);
  }
  for (int64_t b = 0; b < k; ++b) {
    const T* xb = x + colpos[b];
    const T* wb = w + b * w_tap;
    typename V::type wv[NV];
    BSR_UNROLL
    for (int u = 0; u < NV; ++u) {
      if constexpr (kPixel) BSR_PREFETCH(wb + pf + u * L, 0);
      wv[u] = kPixel ? V::load(wb + u * L) : V::splat(wb[0]);
    }
    BSR_UNROLL
    for (int cc = 0; cc < CB; ++cc) {
      BSR_UNROLL
      for (int u = 0; u < NV; ++u) sum[cc][u] += wv[u] * V::load(xb + cc * x_ch + u * L);
    }
  }
  BSR_UNROLL
  for (int cc = 0; cc < CB; ++cc) {
    BSR_UNROLL
    for (int u = 0; u < NV; ++u) V::store(acc + cc * acc_ch + u * L, sum[cc][u]);
  }
}

// The same for `len` (< one vector) single outputs.
template <int CB, bool kPixel, typename T>
BSR_INLINE void forward_tail(T* acc, int64_t acc_ch, const T* x, int64_t x_ch, const int64_t* colpos, const T* w,
                             int64_t w_tap, int64_t k, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    T sum[CB];
    for (int cc = 0; cc < CB; ++cc) sum[cc] = acc[cc * acc_ch + j];
    for (int64_t b = 0; b < k; ++b) {
      const T wv = w[b * w_tap + (kPixel ? j : 0)];
      for (int cc = 0; cc < CB; ++cc) sum[cc] += wv * x[cc * x_ch + colpos[b] + j];
    }
    for (int cc = 0; cc < CB; ++cc) acc[cc * acc_ch + j] = sum[cc];
  }
}

template <int CB, bool kPixel, typename T>
BSR_INLINE void forward_row(T* acc, int64_t acc_ch, const T* x, int64_t x_ch, const int64_t* colpos, const T* w,
                            int64_t w_tap, int64_t k, int64_t len) {
  constexpr int L = Vec<T>::kLanes;
  const int64_t wj = kPixel ? 1 : 0;
  const int64_t pf = kPrefetchRows * len;  // the same taps, rows ahead
  int64_t j = 0;
  for (; j + 2 * L <= len; j += 2 * L)
    forward_tile<CB, 2, kPixel>(acc + j, acc_ch, x + j, x_ch, colpos, w + j * wj, w_tap, k, pf);
  for (; j + L <= len; j += L)
    forward_tile<CB, 1, kPixel>(acc + j, acc_ch, x + j, x_ch, colpos, w + j * wj, w_tap, k, pf);
  if (j < len) forward_tail<CB, kPixel>(acc + j, acc_ch, x + j, x_ch, colpos, w + j * wj, w_tap, k, len - j);
}

// All C channels, in groups of 3 (the RGB case in one pass), then single channels.
template <bool kPixel, typename T>
BSR_INLINE void forward_channels(int64_t C, T* acc, int64_t acc_ch, const T* x, int64_t x_ch, const int64_t* colpos,
                                 const T* w, int64_t w_tap, int64_t k, int64_t len) {
  int64_t c0 = 0;
  for (; c0 + 3 <= C; c0 += 3)
    forward_row<3, kPixel>(acc + c0 * acc_ch, acc_ch, x + c0 * x_ch, x_ch, colpos, w, w_tap, k, len);
  for (; c0 < C; ++c0)
    forward_row<1, kPixel>(acc + c0 * acc_ch, acc_ch, x + c0 * x_ch, x_ch, colpos, w, w_tap, k, len);
}

// Operands of the backward for one output row i and one tap row a: pointers at output
// j = 0, channel 0, tap b = 0; channel strides *_ch, tap strides *_tap.
template <typename T>
struct BwdRow {
  const T* go; int64_t go_ch;   // grad_out[n, :, i, :]
  const T* w; int64_t w_tap;    // kernel weights of tap (a, 0) (w[b * w_tap] only, when not per pixel)
  T* gx; int64_t gx_ch;         // padded-gradient row s*i + a' (phase-split)
  const T* x; int64_t x_ch;     // padded input row s*i + a' (phase-split)
  T* gk; int64_t gk_tap;        // grad_K of tap (a, 0) at row i, or per-tap lanes
  const int64_t* colpos;
  int64_t k;
};

// Backward, one output row and tap row, NV vectors of outputs j, CB channels; grad_out
// stays in registers for all k taps b:
//   kGx: gx[cc][colpos[b] + j] += w_b(j) * go[cc][j]
//   kGk: gk_b[j] (kAssign ? = : +=) sum_cc go[cc][j] * x[cc][colpos[b] + j]
template <int CB, int NV, bool kPixel, bool kGx, bool kGk, bool kAssign, typename T>
BSR_INLINE void backward_tile(const T* __restrict go, int64_t go_ch, const T* __restrict w, int64_t w_tap,
                              T* __restrict gx, int64_t gx_ch, const T* __restrict x, int64_t x_ch,
                              T* __restrict gk, int64_t gk_tap, const int64_t* __restrict colpos, int64_t k,
                              int64_t pf) {
  using V = Vec<T>;
  constexpr int L = V::kLanes;
  typename V::type g[CB][NV];
  BSR_UNROLL
  for (int cc = 0; cc < CB; ++cc) {
    BSR_UNROLL
    for (int u = 0; u < NV; ++u) g[cc][u] = V::load(go + cc * go_ch + u * L);
  }
  // Two passes over the taps rather than one: the kernel rows read by the first and the
  // grad_K rows written by the second are 4 KiB apart tap to tap and usually congruent
  // modulo 4 KiB, so interleaved, the loads stall on false store aliasing.
  if constexpr (kGx) {
    for (int64_t b = 0; b < k; ++b) {
      const int64_t cb = colpos[b];
      const T* wb = w + b * w_tap;
      BSR_UNROLL
      for (int u = 0; u < NV; ++u) {
        if constexpr (kPixel) BSR_PREFETCH(wb + pf + u * L, 0);
        const typename V::type wv = kPixel ? V::load(wb + u * L) : V::splat(wb[0]);
        BSR_UNROLL
        for (int cc = 0; cc < CB; ++cc) {
          T* p = gx + cc * gx_ch + cb + u * L;
          V::store(p, V::load(p) + wv * g[cc][u]);
        }
      }
    }
  }
  if constexpr (kGk) {
    for (int64_t b = 0; b < k; ++b) {
      const int64_t cb = colpos[b];
      T* ob = gk + b * gk_tap;
      BSR_UNROLL
      for (int u = 0; u < NV; ++u) {
        if constexpr (kPixel) BSR_PREFETCH(ob + pf + u * L, 1);
        typename V::type sum = kAssign ? V::splat(T(0)) : V::load(ob + u * L);
        BSR_UNROLL
        for (int cc = 0; cc < CB; ++cc) sum += g[cc][u] * V::load(x + cc * x_ch + cb + u * L);
        V::store(ob + u * L, sum);
      }
    }
  }
}

// The same for `len` (< one vector) single outputs.
template <int CB, bool kPixel, bool kGx, bool kGk, bool kAssign, typename T>
BSR_INLINE void backward_tail(const T* go, int64_t go_ch, const T* w, int64_t w_tap, T* gx, int64_t gx_ch,
                              const T* x, int64_t x_ch, T* gk, int64_t gk_tap, const int64_t* colpos, int64_t k,
                              int64_t len) {
  for (int64_t j = 0; j < len; ++j)
    for (int64_t b = 0; b < k; ++b) {
      const int64_t cb = colpos[b];
      if constexpr (kGx) {
        const T wv = w[b * w_tap + (kPixel ? j : 0)];
        for (int cc = 0; cc < CB; ++cc) gx[cc * gx_ch + cb + j] += wv * go[cc * go_ch + j];
      }
      if constexpr (kGk) {
        T* o = gk + b * gk_tap + (kPixel ? j : 0);
        T sum = kAssign ? T(0) : *o;
        for (int cc = 0; cc < CB; ++cc) sum += go[cc * go_ch + j] * x[cc * x_ch + cb + j];
        *o = sum;
      }
    }
}

// One channel group [c0, c0 + CB) over a row of `len` outputs.
template <int CB, bool kPixel, bool kGx, bool kGk, bool kAssign, typename T>
BSR_INLINE void backward_row(const BwdRow<T>& r, int64_t c0, int64_t len) {
  constexpr int L = Vec<T>::kLanes;
  const T* go = r.go + c0 * r.go_ch;
  T* gx = r.gx + c0 * r.gx_ch;
  const T* x = r.x + c0 * r.x_ch;
  const int64_t wj = kPixel ? 1 : 0;  // per-image: the weights and the grad_K lanes do not move with j
  const int64_t pf = kPrefetchRows * len;
  int64_t j = 0;
  for (; j + 2 * L <= len; j += 2 * L)
    backward_tile<CB, 2, kPixel, kGx, kGk, kAssign>(go + j, r.go_ch, r.w + j * wj, r.w_tap, gx + j, r.gx_ch, x + j,
                                                   r.x_ch, r.gk + j * wj, r.gk_tap, r.colpos, r.k, pf);
  for (; j + L <= len; j += L)
    backward_tile<CB, 1, kPixel, kGx, kGk, kAssign>(go + j, r.go_ch, r.w + j * wj, r.w_tap, gx + j, r.gx_ch, x + j,
                                                   r.x_ch, r.gk + j * wj, r.gk_tap, r.colpos, r.k, pf);
  if (j < len)
    backward_tail<CB, kPixel, kGx, kGk, kAssign>(go + j, r.go_ch, r.w + j * wj, r.w_tap, gx + j, r.gx_ch, x + j,
                                                 r.x_ch, r.gk + j * wj, r.gk_tap, r.colpos, r.k, len - j);
}

// All C channels, in groups of 3, then single channels. A per-pixel grad_K is assigned
// by the first group and accumulated by the following ones (channel order:
// deterministic); per-image grad_K lanes are always accumulated.
template <bool kPixel, bool kGx, bool kGk, typename T>
BSR_INLINE void backward_channels(int64_t C, const BwdRow<T>& r, int64_t len) {
  constexpr bool kAssignFirst = kPixel && kGk;
  int64_t c0 = 0;
  if (C >= 3) {
    backward_row<3, kPixel, kGx, kGk, kAssignFirst>(r, 0, len);
    for (c0 = 3; c0 + 3 <= C; c0 += 3) backward_row<3, kPixel, kGx, kGk, false>(r, c0, len);
  } else {
    backward_row<1, kPixel, kGx, kGk, kAssignFirst>(r, 0, len);
    c0 = 1;
  }
  for (; c0 < C; ++c0) backward_row<1, kPixel, kGx, kGk, false>(r, c0, len);
}

// ---- tasks ----

template <typename scalar_t>
struct FwdArgs {
  const Plan* p;
  const scalar_t* x;
  const scalar_t* kernel;
  scalar_t* out;
};

// Scratch of one forward task: phase-split rows, the accumulator, one linear row.
int64_t forward_scratch(const Plan& p) {
  const Geometry& g = p.g;
  return g.C * (g.stride * (p.rows - 1) + g.k) * p.SW + g.C * p.rows * g.Wo + p.SW;
}

// Output rows [i0, i1) of image n.
template <typename scalar_t, bool kPixel>
BSR_INLINE void forward_task_impl(const FwdArgs<scalar_t>& args, int64_t n, int64_t i0, int64_t i1,
                                  scalar_t* scratch) {
  using acc_t = scalar_t;
  const Plan& p = *args.p;
  const Geometry& g = p.g;
  const int64_t s = g.stride, Wo = g.Wo, R = i1 - i0;
  const int64_t r0 = s * i0, r1 = s * (i1 - 1) + g.k, xrows = r1 - r0;
  acc_t* xs = scratch;                       // [C][xrows][SW]
  acc_t* acc = xs + g.C * xrows * p.SW;      // [C][R][Wo]
  acc_t* lin = acc + g.C * R * Wo;           // [SW]
  load_rows<scalar_t, acc_t>(p, args.x, n, r0, r1, xs, lin);
  std::fill(acc, acc + g.C * R * Wo, acc_t(0));
  const scalar_t* kn = args.kernel + n * g.ks_n;
  for (int64_t a = 0; a < g.k; ++a) {
    const int64_t pa = p.tap_pos[a];
    for (int64_t b0 = 0; b0 < g.k; b0 += kTapGroup) {
      const int64_t nb = std::min(kTapGroup, g.k - b0);
      for (int64_t i = i0; i < i1; ++i) {
        const scalar_t* w = kn + (a * g.k + b0) * g.ks_t + i * g.ks_i;
        forward_channels<kPixel>(g.C, acc + (i - i0) * Wo, R * Wo, xs + (s * (i - i0) + pa) * p.SW, xrows * p.SW,
                                 p.colpos.data() + b0, w, g.ks_t, nb, Wo);
      }
    }
  }
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = i0; i < i1; ++i) {
      const acc_t* __restrict src = acc + (c * R + i - i0) * Wo;
      scalar_t* __restrict dst = args.out + ((n * g.C + c) * g.Ho + i) * Wo;
      for (int64_t j = 0; j < Wo; ++j) dst[j] = static_cast<scalar_t>(src[j]);
    }
}

// ---- stride 1, one kernel per image or shared: planes side by side ----
//
// At stride 1 with a kernel that does not vary over the pixels, the forward works on the L
// planes (n, c) of a group at once, one plane per lane of a 32-byte vector: xp[r][w][l] is
// padded pixel (r, w) of plane l, wv[pa][pb][l] the weight plane l gives padded offset
// (pa, pb). A tile of kPlaneTile outputs of one row stays in registers for all k*k taps; per
// tap row, runs of kTapRun weights are loaded once, and each input vector, loaded once, feeds
// every output of the tile it reaches with one of them, so a multiply-add costs about 0.4
// (aligned) loads instead of one.

constexpr int64_t kPlaneTile = 8;  // outputs per register tile
constexpr int64_t kTapRun = 7;     // weights per run
constexpr int64_t kPlaneRows = 16; // output rows per task

// Geometry of the planes path: L planes per group, rows of Wpad padded columns (zeros past the
// padded row), Wt outputs computed per row (Wo rounded up to whole tiles).
template <typename T>
struct PlanePlan {
  static constexpr int64_t L = Vec<T, 32>::kLanes;
  int64_t k = 0, planes = 0, groups = 0, Wt = 0, Wpad = 0, blocks = 0;
  explicit PlanePlan(const Plan& p) {
    const Geometry& g = p.g;
    k = g.k;
    planes = g.N * g.C;
    groups = ceil_div(planes, L);
    Wt = ceil_div(g.Wo, kPlaneTile) * kPlaneTile;
    Wpad = Wt + g.k - 1;
    blocks = ceil_div(g.Ho, kPlaneRows);
  }
  // elements of one task's scratch: input rows, weights, one output row, and room to align them to 64 bytes
  int64_t scratch() const { return ((kPlaneRows + k - 1) * Wpad + k * k + Wt) * L + 64; }
};

// acc[u] += sum_b w[b] * x[u + b] over the B weights of a run, vectors of L lanes; each x[m] is
// loaded once.
template <int U, int B, typename T>
BSR_INLINE void sliding_taps(typename Vec<T, 32>::type* acc, const T* __restrict x, const T* __restrict w) {
  using V = Vec<T, 32>;
  constexpr int L = V::kLanes;
  typename V::type wv[B];
  BSR_UNROLL
  for (int b = 0; b < B; ++b) wv[b] = V::load(w + b * L);
  BSR_UNROLL
  for (int m = 0; m < U + B - 1; ++m) {
    const typename V::type xv = V::load(x + m * L);
    BSR_UNROLL
    for (int u = 0; u < U; ++u)
      if (m - u >= 0 && m - u < B) acc[u] += wv[m - u] * xv;
  }
}

// One output row: out[j][l] = sum_{pa, pb} wv[pa][pb][l] * xp[pa][j + pb][l] for j < Wt.
template <typename T>
BSR_INLINE void planes_row(T* __restrict out, const T* xp, int64_t Wpad, const T* wv, int64_t k, int64_t Wt) {
  using V = Vec<T, 32>;
  constexpr int L = V::kLanes, U = kPlaneTile, B = kTapRun;
  for (int64_t j0 = 0; j0 < Wt; j0 += U) {
    typename V::type acc[U];
    BSR_UNROLL
    for (int u = 0; u < U; ++u) acc[u] = V::splat(T(0));
    for (int64_t pa = 0; pa < k; ++pa) {
      const T* xr = xp + (pa * Wpad + j0) * L;
      const T* wr = wv + pa * k * L;
      int64_t pb = 0;
      for (; pb + B <= k; pb += B) sliding_taps<U, B>(acc, xr + pb * L, wr + pb * L);
      for (; pb < k; ++pb) sliding_taps<U, 1>(acc, xr + pb * L, wr + pb * L);
    }
    BSR_UNROLL
    for (int u = 0; u < U; ++u) V::store(out + (j0 + u) * L, acc[u]);
  }
}

// Output rows [blk * kPlaneRows, ...) of the planes of group `group`.
template <typename T>
BSR_INLINE void planes_task_impl(const Plan& p, const T* x, const T* kernel, T* out, int64_t group, int64_t blk,
                                 T* scratch) {
  const Geometry& g = p.g;
  const PlanePlan<T> q(p);
  constexpr int64_t L = PlanePlan<T>::L;
  const int64_t k = g.k, i0 = blk * kPlaneRows, i1 = std::min(g.Ho, i0 + kPlaneRows), p0 = group * L;
  const int64_t lanes = std::min(L, q.planes - p0);
  T* xp = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
  T* wv = xp + (i1 - i0 + k - 1) * q.Wpad * L;  // [k][k][L]
  T* obuf = wv + k * k * L;                     // [Wt][L]
  std::fill(wv, wv + k * k * L, T(0));
  for (int64_t l = 0; l < lanes; ++l)
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b)
        wv[(p.tap_pos[a] * k + p.tap_pos[b]) * L + l] = kernel[(p0 + l) / g.C * g.ks_n + (a * k + b) * g.ks_t];
  for (int64_t r = i0; r < i1 + k - 1; ++r) {
    T* dst = xp + (r - i0) * q.Wpad * L;
    std::fill(dst, dst + q.Wpad * L, T(0));
    if (p.row_src[r] < 0) continue;
    for (int64_t l = 0; l < lanes; ++l) {
      const T* __restrict xr = x + ((p0 + l) * g.H + p.row_src[r]) * g.W;
      for (int64_t w = 0; w < p.Wp; ++w)
        if (p.col_src[w] >= 0) dst[w * L + l] = xr[p.col_src[w]];
    }
  }
  for (int64_t i = i0; i < i1; ++i) {
    planes_row(obuf, xp + (i - i0) * q.Wpad * L, q.Wpad, wv, k, q.Wt);
    for (int64_t l = 0; l < lanes; ++l) {
      T* __restrict dst = out + ((p0 + l) * g.Ho + i) * g.Wo;
      for (int64_t j = 0; j < g.Wo; ++j) dst[j] = obuf[j * L + l];
    }
  }
}

BSR_CLONES void planes_task_f32(const Plan& p, const float* x, const float* kernel, float* out, int64_t group,
                                int64_t blk, float* scratch) {
  planes_task_impl(p, x, kernel, out, group, blk, scratch);
}

template <typename T>
void planes_task(const Plan& p, const T* x, const T* kernel, T* out, int64_t group, int64_t blk, T* scratch) {
  if constexpr (std::is_same_v<T, float>)
    planes_task_f32(p, x, kernel, out, group, blk, scratch);
  else
    planes_task_impl(p, x, kernel, out, group, blk, scratch);
}

template <typename scalar_t>
struct BwdArgs {
  const Plan* p;
  const RowFold* fold;
  const scalar_t* x;
  const scalar_t* kernel;
  const scalar_t* grad_out;
  scalar_t* grad_x;                      // null: not wanted
  scalar_t* grad_kernel;                 // per-pixel grad_K, null: not wanted
  scalar_t* partial;                     // per-image grad_K partial sums [N][bwd_blocks][k*k]
  scalar_t* side;                        // side rows [N][C][slots][W]
};

// Scratch of one backward task: x rows, padded-gradient rows, per-tap grad_K lanes
// (k rows of two vectors), one linear row.
template <typename T>
int64_t backward_scratch(const Plan& p) {
  const Geometry& g = p.g;
  return 2 * g.C * p.bwd_rows * p.SW + g.k * 2 * Vec<T>::kLanes + p.SW;
}

// Padded rows [blk * bwd_rows, ...) of image n: kGx accumulates the padded-gradient
// rows and folds them into grad_x, kGk writes grad_K (kPixel) or its partial sums.
template <typename scalar_t, bool kPixel, bool kGx, bool kGk>
BSR_INLINE void backward_task_impl(const BwdArgs<scalar_t>& args, int64_t n, int64_t blk, scalar_t* scratch) {
  using acc_t = scalar_t;
  const Plan& p = *args.p;
  const Geometry& g = p.g;
  const int64_t s = g.stride, Wo = g.Wo, RB = p.bwd_rows, taps = g.k * g.k;
  const int64_t r0 = blk * RB, r1 = r0 + RB;
  const int64_t lanes_w = 2 * Vec<acc_t>::kLanes;
  acc_t* xs = scratch;                        // [C][RB][SW]
  acc_t* gs = xs + g.C * RB * p.SW;           // [C][RB][SW]
  acc_t* lanes = gs + g.C * RB * p.SW;        // [k][lanes_w]: per-image grad_K lanes
  acc_t* lin = lanes + g.k * lanes_w;         // [SW]
  if (kGk) load_rows<scalar_t, acc_t>(p, args.x, n, r0, r1, xs, lin);
  if (kGx) std::fill(gs, gs + g.C * RB * p.SW, acc_t(0));
  acc_t* partial = (kGk && !kPixel) ? args.partial + (n * p.bwd_blocks + blk) * taps : nullptr;
  BwdRow<acc_t> row{};
  row.go_ch = g.Ho * Wo;
  row.w_tap = g.ks_t;
  row.gx_ch = RB * p.SW;
  row.x_ch = RB * p.SW;
  row.gk_tap = kPixel ? g.ks_t : lanes_w;
  const scalar_t* go_n = args.grad_out + n * g.C * g.Ho * Wo;
  for (int64_t a = 0; a < g.k; ++a) {
    const int64_t pa = p.tap_pos[a];
    // the output rows i with s*i + pa in [r0, r1)
    const int64_t ilo = std::max<int64_t>(0, ceil_div(r0 - pa, s));
    const int64_t ihi = std::min<int64_t>(g.Ho, ceil_div(r1 - pa, s));
    if (partial) std::fill(lanes, lanes + g.k * lanes_w, acc_t(0));
    for (int64_t b0 = 0; b0 < g.k; b0 += kTapGroup) {
      row.k = std::min(kTapGroup, g.k - b0);
      row.colpos = p.colpos.data() + b0;
      for (int64_t i = ilo; i < ihi; ++i) {
        const int64_t lr = s * i + pa - r0;  // local padded row
        row.go = go_n + i * Wo;
        row.w = args.kernel + n * g.ks_n + (a * g.k + b0) * g.ks_t + i * g.ks_i;
        row.gx = gs + lr * p.SW;
        row.x = xs + lr * p.SW;
        if constexpr (kPixel && kGk)
          row.gk = args.grad_kernel + kernel_offset(g, n, a * g.k + b0, i, 0);
        else
          row.gk = lanes + b0 * lanes_w;
        backward_channels<kPixel, kGx, kGk>(g.C, row, Wo);
      }
    }
    if (partial)
      for (int64_t b = 0; b < g.k; ++b) {
        acc_t sum = 0;
        for (int64_t v = 0; v < lanes_w; ++v) sum += lanes[b * lanes_w + v];
        partial[a * g.k + b] = sum;
      }
  }
  if constexpr (kGx) {
    // Fold the padded-gradient rows by columns; send them to grad_x or to the side buffer.
    const RowFold& f = *args.fold;
    for (int64_t c = 0; c < g.C; ++c) {
      for (int64_t r = r0; r < std::min(r1, p.Hp); ++r) {
        const int64_t y = p.row_src[r];
        if (y < 0) continue;
        acc_t* grow = gs + (c * RB + r - r0) * p.SW;
        const acc_t* padded = grow;
        if (s > 1) {  // back to a linear padded row
          phase_permute<false>(grow, lin, s, p.Wq);
          padded = lin;
        }
        const int64_t slot = f.slot[r];
        if (slot < 0 && p.before == 0 && p.Wp == g.W) {
          scalar_t* __restrict gx = args.grad_x + ((n * g.C + c) * g.H + y) * g.W;
          for (int64_t xc = 0; xc < g.W; ++xc) gx[xc] = static_cast<scalar_t>(padded[xc]);
          continue;
        }
        // the border columns, added into the image columns they read (in place: they
        // lie outside [before, before + W), which is what is read below)
        acc_t* mid = (s > 1 ? lin : grow) + p.before;
        for (size_t e = 0; e < p.border_cols.size(); ++e) mid[p.border_dst[e]] += padded[p.border_cols[e]];
        if (slot >= 0) {
          acc_t* __restrict dst = args.side + ((n * g.C + c) * f.slots + slot) * g.W;
          for (int64_t xc = 0; xc < g.W; ++xc) dst[xc] = mid[xc];
        } else {
          scalar_t* __restrict gx = args.grad_x + ((n * g.C + c) * g.H + y) * g.W;
          for (int64_t xc = 0; xc < g.W; ++xc) gx[xc] = static_cast<scalar_t>(mid[xc]);
        }
      }
    }
  }
}

// The task functions. float (what training runs) is compiled for three ISAs and picked
// at load time; the other dtypes (float64 for checks, half types) for the baseline only,
// which keeps the build time reasonable.
template <bool kPixel>
BSR_CLONES void forward_task_f32(const FwdArgs<float>& args, int64_t n, int64_t i0, int64_t i1, float* scratch) {
  forward_task_impl<float, kPixel>(args, n, i0, i1, scratch);
}

template <typename scalar_t, bool kPixel>
void forward_task(const FwdArgs<scalar_t>& args, int64_t n, int64_t i0, int64_t i1, scalar_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, float>)
    forward_task_f32<kPixel>(args, n, i0, i1, scratch);
  else
    forward_task_impl<scalar_t, kPixel>(args, n, i0, i1, scratch);
}

template <bool kPixel, bool kGx, bool kGk>
BSR_CLONES void backward_task_f32(const BwdArgs<float>& args, int64_t n, int64_t blk, float* scratch) {
  backward_task_impl<float, kPixel, kGx, kGk>(args, n, blk, scratch);
}

template <typename scalar_t, bool kPixel, bool kGx, bool kGk>
void backward_task(const BwdArgs<scalar_t>& args, int64_t n, int64_t blk, scalar_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, float>)
    backward_task_f32<kPixel, kGx, kGk>(args, n, blk, scratch);
  else
    backward_task_impl<scalar_t, kPixel, kGx, kGk>(args, n, blk, scratch);
}

// Tasks per parallel chunk: small problems run inline rather than waking threads for a
// few microseconds of work each (the task split, hence the result, does not change).
int64_t task_grain(const Geometry& g, int64_t planes_per_task, int64_t rows_per_task) {
  const int64_t fmas = std::max<int64_t>(1, planes_per_task * rows_per_task * g.Wo * g.k * g.k);
  return std::max<int64_t>(1, (int64_t(1) << 18) / fmas);
}

bool is_half_type(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor forward_impl(const at::Tensor& x, const at::Tensor& kernel, int64_t stride, c10::string_view padding,
                        bool flip) {
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  const Plan p = make_plan(g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "blur_downsample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const FwdArgs<scalar_t> args{&p, x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), out.data_ptr<scalar_t>()};
    const bool per_pixel = kernel.dim() == 4;
    if (!per_pixel && g.stride == 1) {
      const PlanePlan<acc_t> q(p);
      const int64_t tasks = q.groups * q.blocks;
      // Each thread takes the next task when it is done with one, rather than a fixed share: a core that
      // other processes keep busy runs fewer tasks (the results are the same either way).
      std::atomic<int64_t> next{0};
      at::parallel_for(0, tasks, task_grain(g, q.L, kPlaneRows), [&](int64_t, int64_t) {
        std::vector<acc_t> scratch(q.scratch());
        for (int64_t task = next++; task < tasks; task = next++)
          planes_task(p, args.x, args.kernel, args.out, task / q.blocks, task % q.blocks, scratch.data());
      });
      return;
    }
    at::parallel_for(0, g.N * p.fwd_blocks, task_grain(g, g.C, p.rows), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(forward_scratch(p));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / p.fwd_blocks, i0 = (task % p.fwd_blocks) * p.rows;
        const int64_t i1 = std::min(g.Ho, i0 + p.rows);
        if (per_pixel)
          forward_task<scalar_t, true>(args, n, i0, i1, scratch.data());
        else
          forward_task<scalar_t, false>(args, n, i0, i1, scratch.data());
      }
    });
  });
  return out;
}

// float16 / bfloat16 run the float32 kernels on upcast copies: they accumulate in float32
// and round once at the end either way, so the results are the same, and the half types
// do not multiply the compiled code.
at::Tensor forward_cpu(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                       c10::string_view padding, bool flip) {
  count_call("blur_downsample.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  if (is_half_type(x) && kernel.scalar_type() == x.scalar_type())
    return forward_impl(x.to(at::kFloat), kernel.to(at::kFloat), stride, padding, flip).to(x.scalar_type());
  return forward_impl(x, kernel, stride, padding, flip);
}

std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& x,
                                                 const at::Tensor& kernel, int64_t stride,
                                                 c10::string_view padding, bool flip,
                                                 std::array<bool, 2> output_mask) {
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.N, g.C, g.Ho, g.Wo}),
              "blur_downsample backward: grad_out must be (N, C, Ho, Wo)");
  const bool per_pixel = kernel.dim() == 4;
  const bool want_gx = output_mask[0], want_gk = output_mask[1];
  at::Tensor grad_x = want_gx ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_kernel = want_gk ? at::empty_like(kernel) : kernel.new_empty({0});
  if (want_gx) advise_huge_pages(grad_x);
  if (want_gk) advise_huge_pages(grad_kernel);
  if (grad_out.numel() == 0) {  // nothing flows back
    if (want_gx) grad_x.zero_();
    if (want_gk) grad_kernel.zero_();
    return {grad_x, grad_kernel};
  }
  if (!want_gx && !want_gk) return {grad_x, grad_kernel};
  const Plan p = make_plan(g);
  const RowFold fold = make_row_fold(p);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "blur_downsample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = x.options().dtype(at::toOpMathType(x.scalar_type()));
    const int64_t taps = g.k * g.k;
    at::Tensor partial, side;
    if (want_gk && !per_pixel) partial = at::empty({g.N, p.bwd_blocks, taps}, acc_options);
    if (want_gx && fold.slots > 0) side = at::empty({g.N, g.C, fold.slots, g.W}, acc_options);
    BwdArgs<scalar_t> args{};
    args.p = &p;
    args.fold = &fold;
    args.x = x.data_ptr<scalar_t>();
    args.kernel = kernel.data_ptr<scalar_t>();
    args.grad_out = grad_out.data_ptr<scalar_t>();
    args.grad_x = want_gx ? grad_x.data_ptr<scalar_t>() : nullptr;
    args.grad_kernel = want_gk && per_pixel ? grad_kernel.data_ptr<scalar_t>() : nullptr;
    args.partial = partial.defined() ? partial.data_ptr<acc_t>() : nullptr;
    args.side = side.defined() ? side.data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, g.N * p.bwd_blocks, task_grain(g, g.C, 2 * p.bwd_rows / g.stride), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(backward_scratch<acc_t>(p));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / p.bwd_blocks, blk = task % p.bwd_blocks;
        if (per_pixel) {
          if (want_gx && want_gk) backward_task<scalar_t, true, true, true>(args, n, blk, scratch.data());
          else if (want_gx) backward_task<scalar_t, true, true, false>(args, n, blk, scratch.data());
          else backward_task<scalar_t, true, false, true>(args, n, blk, scratch.data());
        } else {
          if (want_gx && want_gk) backward_task<scalar_t, false, true, true>(args, n, blk, scratch.data());
          else if (want_gx) backward_task<scalar_t, false, true, false>(args, n, blk, scratch.data());
          else backward_task<scalar_t, false, false, true>(args, n, blk, scratch.data());
        }
      }
    });
    if (args.side) {  // image rows that padding reads more than once: sum their padded rows in order
      const int64_t nfix = static_cast<int64_t>(fold.fix_rows.size());
      at::parallel_for(0, g.N * g.C * nfix, 16, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t nc = idx / nfix, e = idx % nfix;
          const acc_t* base = args.side + nc * fold.slots * g.W;
          scalar_t* dst = args.grad_x + (nc * g.H + fold.fix_rows[e]) * g.W;
          const int64_t first = fold.fix_start[e], last = fold.fix_start[e + 1];
          for (int64_t xc = 0; xc < g.W; ++xc) {
            acc_t sum = base[fold.fix_slots[first] * g.W + xc];
            for (int64_t q = first + 1; q < last; ++q) sum += base[fold.fix_slots[q] * g.W + xc];
            dst[xc] = static_cast<scalar_t>(sum);
          }
        }
      });
    }
    if (args.partial) {  // per-image grad_K: task partial sums in task order (then images, if shared)
      const int64_t images = kernel.dim() == 2 ? 1 : g.N, per = kernel.dim() == 2 ? g.N : 1;
      at::Tensor total = at::empty({images, taps}, acc_options);
      acc_t* tot = total.data_ptr<acc_t>();
      for (int64_t m = 0; m < images; ++m)
        for (int64_t t = 0; t < taps; ++t) {
          acc_t sum = 0;
          for (int64_t n = m * per; n < (m + 1) * per; ++n)
            for (int64_t blk = 0; blk < p.bwd_blocks; ++blk) sum += args.partial[(n * p.bwd_blocks + blk) * taps + t];
          tot[m * taps + t] = sum;
        }
      grad_kernel = total.view(kernel.sizes()).to(kernel.scalar_type());
    }
  });
  return {grad_x, grad_kernel};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& kernel_in, int64_t stride,
                                                c10::string_view padding, bool flip,
                                                std::array<bool, 2> output_mask) {
  count_call("_blur_downsample_backward.cpu");
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous(), grad_out = grad_out_in.contiguous();
  if (!is_half_type(x) || kernel.scalar_type() != x.scalar_type())
    return backward_impl(grad_out, x, kernel, stride, padding, flip, output_mask);
  auto [grad_x, grad_kernel] = backward_impl(grad_out.to(at::kFloat), x.to(at::kFloat), kernel.to(at::kFloat),
                                             stride, padding, flip, output_mask);
  return {grad_x.to(x.scalar_type()), grad_kernel.to(kernel.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("blur_downsample", &forward_cpu);
  m.impl("_blur_downsample_backward", &backward_cpu);
}

}  // namespace blur_downsample
}  // namespace bsrops
