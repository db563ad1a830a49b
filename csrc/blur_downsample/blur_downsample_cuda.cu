// CUDA kernels of bsrops::blur_downsample.
//
// Each thread decodes its index and calls the per-element functions of blur_downsample.h,
// the same functions the CPU "cpu_shared" backend loops over, so the CPU tests check this
// maths. Gradients are gathers (no atomics), and every sum runs in a fixed order, hence
// deterministic:
//   forward, per-pixel layout (and the others where their window does not fit shared memory): one
//                 thread per output pixel and group of kChannelBlock channels (the kernel read once
//                 per group)                               -> forward_channels
//   forward, per-image and shared layouts: one block per kTile x kTile output tile and plane; the
//                 tile's window of the padded input and the weights in shared memory -> window_value,
//                 window_weight, window_output
//   The forward kernels take (k, s) as template parameters for the presets' pairs and index in
//   int32_t when every tensor allows (dispatch_shape), the generic runtime (k, s) otherwise.
//   grad_x      : one thread per input pixel              -> grad_input_element
//   grad_kernel, per-pixel layout: one thread per (n, tap, output pixel), a 3-D grid of
//                 (pixel tile, tap, image) blocks          -> grad_kernel_offsets_element
//   grad_kernel, per-image and shared layouts: one block per (tap, band of output rows, image);
//                 its threads sum disjoint parts of the band -> grad_kernel_element, then
//                 block_sum adds them in a fixed tree order; bands (when the grid needs more
//                 blocks than N * k * k) are summed by at::sum, and the shared (k, k) kernel's
//                 gradient is the per-image gradient (in opmath dtype) summed over N.
// Only minimal headers are included (docs/ops.md): this file must compile
// against the CPU torch wheel for the nvcc compile check.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <tuple>

#include "../common/call_counter.h"
#include "../common/cuda_kernel.cuh"
#include "blur_downsample.h"

namespace bsrops {
namespace blur_downsample {
namespace {

// out[n, c0 .. c0 + kChannelBlock, i, j] for e = ((n * groups + c0 / kChannelBlock) * Ho + i) * Wo + j,
// groups = ceil(C / kChannelBlock): each weight is read once for a group of channels.
template <typename scalar_t, int K, int S, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ kernel, scalar_t* __restrict__ out,
                   const Geometry g, const index_t groups, const index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t C = static_cast<index_t>(g.C), Ho = static_cast<index_t>(g.Ho), Wo = static_cast<index_t>(g.Wo);
  BSR_GRID_STRIDE_AS(index_t, e, total) {
    const index_t j = e % Wo, i = (e / Wo) % Ho, group = (e / (Wo * Ho)) % groups;
    const index_t n = e / (Wo * Ho * groups), c0 = group * kChannelBlock;
    const int count = static_cast<int>(C - c0 < kChannelBlock ? C - c0 : kChannelBlock);
    acc_t acc[kChannelBlock];
    forward_channels<scalar_t, acc_t, K, S, index_t>(x, kernel, g, n, c0, count, i, j, acc);
    scalar_t* pixel = out + ((n * C + c0) * Ho + i) * Wo + j;
    for (int q = 0; q < count; ++q) pixel[q * Ho * Wo] = static_cast<scalar_t>(acc[q]);
  }
}

// The per-image and shared layouts: block (tile blockIdx.x, plane blockIdx.y) computes the kTile x kTile
// outputs of tile blockIdx.x (tiles_w tiles per tile row) in plane n * C + c, striding by gridDim.y over
// planes. Per plane its threads load the weights of image n and the tile's window into shared memory
// (window_bytes), then thread (li, lj) = (threadIdx.x / kTile, threadIdx.x % kTile) sums its output
// from them: each input value is read from global memory once per tile, not once per tap.
template <typename scalar_t, int K, int S, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_window_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ kernel,
                          scalar_t* __restrict__ out, const Geometry g, const int tiles_w) {
  static_assert(kTile * kTile == kThreads, "one thread per output of a tile");
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char memory[];
  const int k = K > 0 ? K : static_cast<int>(g.k), s = K > 0 ? S : static_cast<int>(g.stride);
  const index_t side = static_cast<index_t>(window_side(k, s));
  acc_t* weights = reinterpret_cast<acc_t*>(memory);
  scalar_t* window = reinterpret_cast<scalar_t*>(weights + k * k);
  const index_t i0 = static_cast<index_t>(blockIdx.x / tiles_w) * kTile, j0 = static_cast<index_t>(blockIdx.x % tiles_w) * kTile;
  const int li = threadIdx.x / kTile, lj = threadIdx.x % kTile;
  const index_t C = static_cast<index_t>(g.C), Ho = static_cast<index_t>(g.Ho), Wo = static_cast<index_t>(g.Wo);
  const index_t planes = static_cast<index_t>(g.N) * C, plane_size = static_cast<index_t>(g.H * g.W);
  for (index_t p = blockIdx.y; p < planes; p += gridDim.y) {
    for (int t = threadIdx.x; t < k * k; t += kThreads)
      weights[t] = static_cast<acc_t>(window_weight<scalar_t, index_t>(kernel, g, p / C, t));
    for (index_t r = threadIdx.x; r < side * side; r += kThreads)
      window[r] = window_value<scalar_t, index_t>(x + p * plane_size, g, i0, j0, side, r);
    __syncthreads();
    if (i0 + li < Ho && j0 + lj < Wo)
      out[(p * Ho + i0 + li) * Wo + j0 + lj] =
          static_cast<scalar_t>(window_output<scalar_t, acc_t, K, S>(window, weights, k, s, li, lj));
    __syncthreads();
  }
}

// grad_x[e], e = ((n * C + c) * H + y) * W + x
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ kernel,
                      scalar_t* __restrict__ grad_x, const Geometry g, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  BSR_GRID_STRIDE(e, total) {
    const int64_t xc = e % g.W, y = (e / g.W) % g.H, c = (e / (g.W * g.H)) % g.C, n = e / (g.W * g.H * g.C);
    grad_x[e] = static_cast<scalar_t>(grad_input_element<scalar_t, acc_t>(grad_out, kernel, g, n, c, y, xc));
  }
}

constexpr int kTileW = 32, kTileH = kThreads / kTileW;  // output pixels of a per-pixel grad_kernel block
constexpr int64_t kMaxGridYZ = 65535;                     // the grid's y and z limit
constexpr int64_t kFillBlocks = 1024;                     // blocks that keep a large GPU busy

// kernel<<<grid, kThreads, shared_bytes>>>(args...) on the current CUDA stream, then the launch check.
template <typename... Params, typename... Args>
void launch_grid(void (*kernel)(Params...), dim3 grid, size_t shared_bytes, Args&&... args) {
  kernel<<<grid, kThreads, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad[n, t, i, j] in opmath dtype for the per-pixel layout. Block (blockIdx.x, y, z): the
// kTileH x kTileW tile blockIdx.x of the output (tiles_w tiles per tile row), tap y, image z,
// striding by the grid over taps and images beyond the grid's y and z extent.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_kernel_pixel_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                             at::opmath_type<scalar_t>* __restrict__ grad, const Geometry g, const int tiles_w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t i = static_cast<int64_t>(blockIdx.x / tiles_w) * kTileH + threadIdx.x / kTileW;
  const int64_t j = static_cast<int64_t>(blockIdx.x % tiles_w) * kTileW + threadIdx.x % kTileW;
  if (i >= g.Ho || j >= g.Wo) return;
  const int64_t taps = g.k * g.k, cells = g.Ho * g.Wo;
  for (int64_t n = blockIdx.z; n < g.N; n += gridDim.z) {
    for (int64_t t = blockIdx.y; t < taps; t += gridDim.y) {
      grad[(n * taps + t) * cells + i * g.Wo + j] = grad_kernel_offsets_element<scalar_t, acc_t>(
          grad_out, x, g, n, tap_offset(g, t / g.k), tap_offset(g, t % g.k), i, i + 1, j, j + 1);
    }
  }
}

// partial[n, t, band] in opmath dtype for the per-image and shared layouts: d loss / d K[n, t]
// summed over the output rows [band * band_rows, (band + 1) * band_rows) of image n. Block
// (tap blockIdx.x, band blockIdx.y, image blockIdx.z, striding by gridDim.z over images). Its
// threads form `groups` groups of `lanes` (lanes = min(Wo, kThreads)): thread (group, lane) sums
// columns lane, lane + lanes, ... over its group's share of the band's rows; block_sum then adds
// the threads' sums in a fixed order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_kernel_image_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                             at::opmath_type<scalar_t>* __restrict__ partial, const Geometry g,
                             const int64_t band_rows) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads];
  const int64_t t = blockIdx.x, band = blockIdx.y, bands = gridDim.y, taps = g.k * g.k;
  const int64_t lanes = g.Wo < kThreads ? g.Wo : kThreads, groups = kThreads / lanes;
  const int64_t lane = threadIdx.x % lanes, group = threadIdx.x / lanes;
  const int64_t group_rows = (band_rows + groups - 1) / groups;
  const int64_t band_end = band * band_rows + band_rows < g.Ho ? band * band_rows + band_rows : g.Ho;
  const int64_t i0 = band * band_rows + group * group_rows;
  const int64_t i1 = i0 + group_rows < band_end ? i0 + group_rows : band_end;
  for (int64_t n = blockIdx.z; n < g.N; n += gridDim.z) {
    acc_t sum = 0;
    if (group < groups) {
      for (int64_t j = lane; j < g.Wo; j += lanes) {
        sum += grad_kernel_element<scalar_t, acc_t>(grad_out, x, g, n, t, i0, i1, j, j + 1);
      }
    }
    const acc_t total = block_sum(sum, shared);
    if (threadIdx.x == 0) partial[(n * taps + t) * bands + band] = total;
  }
}

// Bands of output rows per (n, tap) for grad_kernel_image_kernel: one, unless N * k * k blocks
// are too few to fill the device.
int64_t row_bands(const Geometry& g) {
  const int64_t blocks = g.N * g.k * g.k;
  const int64_t wanted = blocks > 0 ? (kFillBlocks + blocks - 1) / blocks : 1;
  return std::max<int64_t>(1, std::min({wanted, g.Ho, kMaxGridYZ}));
}

// d loss / d K in opmath dtype, (N, k*k, Ho*Wo) for the per-pixel layout, else (N, k*k, 1).
template <typename scalar_t>
at::Tensor grad_kernel_sums(const at::Tensor& grad_out, const at::Tensor& x, const Geometry& g, bool per_pixel) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.k * g.k;
  const auto options = x.options().dtype(at::toOpMathType(x.scalar_type()));
  TORCH_CHECK(taps <= INT_MAX, "blur_downsample backward (cuda): kernel size ", g.k, " is too large");
  const unsigned int images = static_cast<unsigned int>(std::max<int64_t>(1, std::min(g.N, kMaxGridYZ)));
  if (per_pixel) {
    at::Tensor grad = at::empty({g.N, taps, g.Ho * g.Wo}, options);
    const int64_t tiles_w = (g.Wo + kTileW - 1) / kTileW, tiles = tiles_w * ((g.Ho + kTileH - 1) / kTileH);
    TORCH_CHECK(tiles <= INT_MAX, "blur_downsample backward (cuda): output of ", g.Ho, " x ", g.Wo, " is too large");
    if (grad.numel() > 0) {
      const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(std::min(taps, kMaxGridYZ)), images);
      launch_grid(grad_kernel_pixel_kernel<scalar_t>, grid, 0, grad_out.const_data_ptr<scalar_t>(),
                  x.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<acc_t>(), g, static_cast<int>(tiles_w));
    }
    return grad;
  }
  const int64_t wanted = row_bands(g), band_rows = (g.Ho + wanted - 1) / wanted;
  const int64_t bands = (g.Ho + band_rows - 1) / band_rows;
  at::Tensor partial = at::empty({g.N, taps, bands}, options);
  if (partial.numel() > 0) {
    const dim3 grid(static_cast<unsigned int>(taps), static_cast<unsigned int>(bands), images);
    launch_grid(grad_kernel_image_kernel<scalar_t>, grid, 0, grad_out.const_data_ptr<scalar_t>(),
                x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), g, band_rows);
  }
  return bands == 1 ? partial : at::sum(partial, {2}, /*keepdim=*/true);
}

void check_cuda_inputs(const at::Tensor& x, const at::Tensor& kernel) {
  TORCH_CHECK(x.is_cuda(), "blur_downsample (cuda): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(kernel.device() == x.device(), "blur_downsample (cuda): kernel must be on x's device ", x.device(),
              ", got ", kernel.device());
}

// The forward: over windows (per-image and shared kernels whose window fits, kTile x kTile output tiles),
// else in channel groups.
template <typename scalar_t, int K, int S, typename index_t>
void launch_forward(bool window, const at::Tensor& x, const at::Tensor& kernel, at::Tensor& out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!window) {
    const int64_t groups = (g.C + kChannelBlock - 1) / kChannelBlock, total = g.N * groups * g.Ho * g.Wo;
    launch_kernel(forward_kernel<scalar_t, K, S, index_t>, grid_blocks(total), x.const_data_ptr<scalar_t>(),
                  kernel.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g,
                  static_cast<index_t>(groups), static_cast<index_t>(total));
    return;
  }
  const int64_t tiles_w = (g.Wo + kTile - 1) / kTile, tiles = tiles_w * ((g.Ho + kTile - 1) / kTile);
  TORCH_CHECK(tiles <= INT_MAX, "blur_downsample (cuda): output of ", g.Ho, " x ", g.Wo, " is too large");
  const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(std::min(g.N * g.C, kMaxGridYZ)));
  launch_grid(forward_window_kernel<scalar_t, K, S, index_t>, grid,
              static_cast<size_t>(window_bytes(g, sizeof(scalar_t), sizeof(acc_t))), x.const_data_ptr<scalar_t>(),
              kernel.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g, static_cast<int>(tiles_w));
}

at::Tensor forward_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t stride,
                        c10::string_view padding, bool flip) {
  count_call("blur_downsample.cuda");
  check_cuda_inputs(x_in, kernel_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  if (out.numel() == 0) return out;
  BSR_DISPATCH_FLOAT_AND_HALF(x.scalar_type(), "blur_downsample_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_forward<scalar_t, acc_t>(g, x, kernel, out, [&](auto K, auto S, auto index, bool window) {
      launch_forward<scalar_t, decltype(K)::value, decltype(S)::value, decltype(index)>(window, x, kernel, out, g);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                 const at::Tensor& kernel_in, int64_t stride,
                                                 c10::string_view padding, bool flip,
                                                 std::array<bool, 2> output_mask) {
  count_call("_blur_downsample_backward.cuda");
  check_cuda_inputs(x_in, kernel_in);
  TORCH_CHECK(grad_out_in.device() == x_in.device() && grad_out_in.scalar_type() == x_in.scalar_type(),
              "blur_downsample backward (cuda): grad_out must match x's device and dtype");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), kernel = kernel_in.contiguous(), grad_out = grad_out_in.contiguous();
  const Geometry g = make_geometry(x, kernel, stride, padding, flip);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.N, g.C, g.Ho, g.Wo}),
              "blur_downsample backward: grad_out must be (N, C, Ho, Wo)");
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_kernel = kernel.new_empty({0});
  BSR_DISPATCH_FLOAT_AND_HALF(x.scalar_type(), "blur_downsample_backward_cuda", [&] {
    if (output_mask[0] && grad_x.numel() > 0) {
      const int64_t total = grad_x.numel();
      launch_kernel(grad_input_kernel<scalar_t>, grid_blocks(total), grad_out.const_data_ptr<scalar_t>(),
                    kernel.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), g, total);
    }
    if (output_mask[1]) {
      grad_kernel = kernel_grad_of(grad_kernel_sums<scalar_t>(grad_out, x, g, kernel.dim() == 4), kernel);
    }
  });
  return {grad_x, grad_kernel};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("blur_downsample", &forward_cuda);
  m.impl("_blur_downsample_backward", &backward_cuda);
}

}  // namespace blur_downsample
}  // namespace bsrops
