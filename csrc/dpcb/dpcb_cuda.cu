// CUDA kernels of bsrops::dpcb's fused part (everything around the four cuDNN convolutions).
//
// Elementwise kernels are grid-stride loops over the per-element functions of dpcb.h, the
// functions the CPU kernels loop over (so the CPU tests check this maths); every tensor is
// read and written through its (N, C, P) strides (dpcb.h), so NCHW and channels_last
// operands mix as on the CPU. Where all operands share one memory order (the LeakyReLU and
// its backward always; the epilogue and its backward with an image-sized condition) a flat
// kernel runs over the storage, in 16-byte packs (cuda_vector.cuh) where every pointer is
// aligned to one and the element count is whole packs, else value by value. The gradient of a
// 1 x 1 condition is one block per (n, c) plane: each thread sums a strided share of the
// plane with grad_cond_scale_plane, then a fixed-shape tree in shared memory adds the shares:
// deterministic, no atomics. Only minimal headers (docs/ops.md).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../common/call_counter.h"
#include "../common/cuda_kernel.cuh"
#include "../common/cuda_vector.cuh"
#include "dpcb.h"

namespace bsrops {
namespace dpcb {
namespace {

// Every elementwise kernel computes in acc_t = at::opmath_type<scalar_t> (float for float16 /
// bfloat16, which are read and written in their own dtype) and indexes in index_t: int32_t
// when the tensors' offsets fit it (fits_int32), else int64_t.
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
__device__ inline acc_t<scalar_t> acc(scalar_t v) {
  return static_cast<acc_t<scalar_t>>(v);
}

// Flat kernels over packs of V values (cuda_vector.cuh; V = 1: scalar accesses), element e in pack e / V.
template <typename scalar_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    leaky_relu_kernel(scalar_t* __restrict__ x, acc_t<scalar_t> slope, index_t packs) {
  BSR_GRID_STRIDE_AS(index_t, e, packs) {
    Pack<scalar_t, V> v = load_pack<V>(x, e);
    for (int q = 0; q < V; ++q) v.v[q] = static_cast<scalar_t>(leaky_relu_element(acc(v.v[q]), slope));
    store_pack<V>(x, e, v);
  }
}

template <typename scalar_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    leaky_relu_backward_kernel(scalar_t* __restrict__ grad, const scalar_t* __restrict__ out, acc_t<scalar_t> slope,
                               index_t packs) {
  BSR_GRID_STRIDE_AS(index_t, e, packs) {
    Pack<scalar_t, V> g = load_pack<V>(grad, e);
    const Pack<scalar_t, V> o = load_pack<V>(out, e);
    for (int q = 0; q < V; ++q) g.v[q] = static_cast<scalar_t>(leaky_relu_grad_element(acc(g.v[q]), acc(o.v[q]), slope));
    store_pack<V>(grad, e, g);
  }
}

// The epilogue of an image-sized condition with every tensor in one memory order: out = modulate(x, f1, f2),
// out_cond = xc + f2, elementwise over the storage.
template <typename scalar_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    epilogue_flat_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ f1,
                         const scalar_t* __restrict__ xc, const scalar_t* __restrict__ f2, scalar_t* __restrict__ out,
                         scalar_t* __restrict__ out_cond, index_t packs) {
  BSR_GRID_STRIDE_AS(index_t, e, packs) {
    const Pack<scalar_t, V> a = load_pack<V>(x, e), b = load_pack<V>(f1, e), c = load_pack<V>(xc, e);
    const Pack<scalar_t, V> d = load_pack<V>(f2, e);
    Pack<scalar_t, V> o, oc;
    for (int q = 0; q < V; ++q) {
      o.v[q] = static_cast<scalar_t>(modulate_element(acc(a.v[q]), acc(b.v[q]), acc(d.v[q])));
      oc.v[q] = static_cast<scalar_t>(acc(c.v[q]) + acc(d.v[q]));
    }
    store_pack<V>(out, e, o);
    store_pack<V>(out_cond, e, oc);
  }
}

// The epilogue backward of an image-sized condition with every tensor in one memory order: g1 = gi * f2
// (g1 != nullptr) and g2 = modulate(gc, gi, f1) (g2 != nullptr), elementwise over the storage.
template <typename scalar_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    epilogue_grad_flat_kernel(const scalar_t* __restrict__ gi, const scalar_t* __restrict__ gc,
                              const scalar_t* __restrict__ f1, const scalar_t* __restrict__ f2,
                              scalar_t* __restrict__ g1, scalar_t* __restrict__ g2, index_t packs) {
  BSR_GRID_STRIDE_AS(index_t, e, packs) {
    const Pack<scalar_t, V> g = load_pack<V>(gi, e);
    if (g1) {
      const Pack<scalar_t, V> b = load_pack<V>(f2, e);
      Pack<scalar_t, V> r;
      for (int q = 0; q < V; ++q) r.v[q] = static_cast<scalar_t>(acc(g.v[q]) * acc(b.v[q]));
      store_pack<V>(g1, e, r);
    }
    if (g2) {
      const Pack<scalar_t, V> c = load_pack<V>(gc, e), a = load_pack<V>(f1, e);
      Pack<scalar_t, V> r;
      for (int q = 0; q < V; ++q) r.v[q] = static_cast<scalar_t>(modulate_element(acc(c.v[q]), acc(g.v[q]), acc(a.v[q])));
      store_pack<V>(g2, e, r);
    }
  }
}

// out_img over all (n, c, p) elements (decoded in NCHW order, each tensor read through its
// strides); out_cond too when the condition is image-sized, else once per (n, c) (p == 0).
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_kernel(const scalar_t* __restrict__ x, PlaneStridesOf<index_t> sx, const scalar_t* __restrict__ f1,
                    PlaneStridesOf<index_t> sf1, const scalar_t* __restrict__ xc, PlaneStridesOf<index_t> sxc,
                    const scalar_t* __restrict__ f2, PlaneStridesOf<index_t> sf2, scalar_t* __restrict__ out,
                    PlaneStridesOf<index_t> so, scalar_t* __restrict__ out_cond, PlaneStridesOf<index_t> soc,
                    index_t channels, index_t pixels, bool pointwise, index_t total) {
  BSR_GRID_STRIDE_AS(index_t, e, total) {
    const index_t p = e % pixels, c = (e / pixels) % channels, n = e / (pixels * channels);
    const acc_t<scalar_t> v2 = acc(f2[offset_of(sf2, n, c, p)]);
    out[offset_of(so, n, c, p)] =
        static_cast<scalar_t>(modulate_element(acc(x[offset_of(sx, n, c, p)]), acc(f1[offset_of(sf1, n, c, p)]), v2));
    if (!pointwise || p == 0)
      out_cond[offset_of(soc, n, c, p)] = static_cast<scalar_t>(acc(xc[offset_of(sxc, n, c, p)]) + v2);
  }
}

// grad_f1 = grad_img * f2 (g1 != nullptr) and, for an image-sized condition, grad_f2 = grad_cond +
// grad_img * f1 (g2 != nullptr), elementwise.
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_grad_kernel(const scalar_t* __restrict__ gi, PlaneStridesOf<index_t> sgi, const scalar_t* __restrict__ gc,
                         PlaneStridesOf<index_t> sgc, const scalar_t* __restrict__ f1, PlaneStridesOf<index_t> sf1,
                         const scalar_t* __restrict__ f2, PlaneStridesOf<index_t> sf2, scalar_t* __restrict__ g1,
                         PlaneStridesOf<index_t> sg1, scalar_t* __restrict__ g2, PlaneStridesOf<index_t> sg2,
                         index_t channels, index_t pixels, index_t total) {
  BSR_GRID_STRIDE_AS(index_t, e, total) {
    const index_t p = e % pixels, c = (e / pixels) % channels, n = e / (pixels * channels);
    const acc_t<scalar_t> g = acc(gi[offset_of(sgi, n, c, p)]);
    if (g1) g1[offset_of(sg1, n, c, p)] = static_cast<scalar_t>(g * acc(f2[offset_of(sf2, n, c, p)]));
    if (g2)
      g2[offset_of(sg2, n, c, p)] = static_cast<scalar_t>(
          modulate_element(acc(gc[offset_of(sgc, n, c, p)]), g, acc(f1[offset_of(sf1, n, c, p)])));
  }
}

// One block per (n, c) plane: g2 = grad_cond + the plane's sum of grad_img * f1.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_cond_plane_kernel(const scalar_t* __restrict__ gi, PlaneStrides sgi, const scalar_t* __restrict__ gc,
                           PlaneStrides sgc, const scalar_t* __restrict__ f1, PlaneStrides sf1,
                           scalar_t* __restrict__ g2, PlaneStrides sg2, int64_t channels, int64_t pixels) {
  __shared__ acc_t<scalar_t> partial[kThreads];
  const int64_t n = blockIdx.x / channels, c = blockIdx.x % channels;
  const acc_t<scalar_t> sum =
      block_sum(grad_cond_scale_plane<scalar_t, acc_t<scalar_t>>(gi + offset_of(sgi, n, c, 0), sgi.p,
                                                                 f1 + offset_of(sf1, n, c, 0), sf1.p, threadIdx.x,
                                                                 pixels, blockDim.x),
                partial);
  if (threadIdx.x == 0) g2[offset_of(sg2, n, c, 0)] = static_cast<scalar_t>(sum + acc(gc[offset_of(sgc, n, c, 0)]));
}

// out = x (+ other), each in its own layout
template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    relayout_kernel(const scalar_t* __restrict__ x, PlaneStridesOf<index_t> sx, const scalar_t* __restrict__ other,
                    PlaneStridesOf<index_t> sother, scalar_t* __restrict__ out, PlaneStridesOf<index_t> sout,
                    index_t channels, index_t pixels, index_t total) {
  BSR_GRID_STRIDE_AS(index_t, e, total) {
    const index_t p = e % pixels, c = (e / pixels) % channels, n = e / (pixels * channels);
    const scalar_t v = x[offset_of(sx, n, c, p)];
    out[offset_of(sout, n, c, p)] = other ? static_cast<scalar_t>(acc(v) + acc(other[offset_of(sother, n, c, p)])) : v;
  }
}

// A PlaneStrides in the kernel's index type (with_index_type chose one that holds every offset).
template <typename index_t>
PlaneStridesOf<index_t> narrow(const PlaneStrides& s) {
  return {static_cast<index_t>(s.n), static_cast<index_t>(s.c), static_cast<index_t>(s.p)};
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "dpcb (cuda): ", name, " must be a CUDA tensor, got ", t.device());
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "dpcb (cuda): ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

// Whether every tensor has one shape and strides: elementwise maths then runs over their storage.
bool one_order(std::initializer_list<at::Tensor> tensors) {
  const at::Tensor& first = *tensors.begin();
  for (const at::Tensor& t : tensors)
    if (t.sizes() != first.sizes() || t.strides() != first.strides()) return false;
  return true;
}

// f(index_t{}, V) for a flat kernel over `total` elements: int32_t indices in packs of V values where every
// pointer allows (with_pack_size), else scalar accesses (V = 1) in int32_t or, past fits_int32, int64_t.
template <typename scalar_t, typename F>
void with_flat_types(int64_t total, std::initializer_list<const void*> pointers, const F& f) {
  if (!fits_int32(total)) return f(int64_t{0}, std::integral_constant<int, 1>{});
  with_pack_size<scalar_t>(total, pointers, [&](auto V) { f(int32_t{0}, V); });
}

// kernel<<<...>>>(args..., packs) over the `total` elements of a flat kernel in packs of V.
template <int V, typename index_t, typename... Params, typename... Args>
void launch_flat(void (*kernel)(Params...), int64_t total, Args&&... args) {
  launch_kernel(kernel, grid_blocks(total / V), std::forward<Args>(args)..., static_cast<index_t>(total / V));
}

void leaky_relu_cuda(at::Tensor& x, double slope) {
  count_call("_leaky_relu_.cuda");
  check_cuda(x, "x");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "_leaky_relu_: x must be dense (NCHW or channels_last)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  if (total == 0) return;
  BSR_DISPATCH_FLOAT_AND_HALF(x.scalar_type(), "leaky_relu_cuda", [&] {
    scalar_t* data = x.mutable_data_ptr<scalar_t>();
    with_flat_types<scalar_t>(total, {data}, [&](auto index, auto V) {
      using index_t = decltype(index);
      launch_flat<decltype(V)::value, index_t>(leaky_relu_kernel<scalar_t, index_t, decltype(V)::value>, total, data,
                                    static_cast<acc_t<scalar_t>>(slope));
    });
  });
}

void leaky_relu_backward_cuda(at::Tensor& grad, const at::Tensor& out_in, double slope) {
  count_call("_leaky_relu_backward_.cuda");
  check_cuda(grad, "grad");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor out = same_order(out_in, grad);
  const int64_t total = grad.numel();
  if (total == 0) return;
  BSR_DISPATCH_FLOAT_AND_HALF(grad.scalar_type(), "leaky_relu_backward_cuda", [&] {
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    const scalar_t* o = out.const_data_ptr<scalar_t>();
    with_flat_types<scalar_t>(total, {g, o}, [&](auto index, auto V) {
      using index_t = decltype(index);
      launch_flat<decltype(V)::value, index_t>(leaky_relu_backward_kernel<scalar_t, index_t, decltype(V)::value>, total, g, o,
                                    static_cast<acc_t<scalar_t>>(slope));
    });
  });
}

std::tuple<at::Tensor, at::Tensor> epilogue_cuda(const at::Tensor& x_in, const at::Tensor& f1_in,
                                                 const at::Tensor& xc_in, const at::Tensor& f2_in) {
  count_call("_dpcb_epilogue.cuda");
  check_cuda(x_in, "x_img");
  const bool pointwise = check_epilogue(x_in, f1_in, xc_in, f2_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in), f1 = dense(f1_in), xc = dense(xc_in), f2 = dense(f2_in);
  at::Tensor out = at::empty_like(x), out_cond = at::empty_like(xc);
  const int64_t total = x.numel();
  if (total == 0) return {out, out_cond};
  if (!pointwise && one_order({x, f1, xc, f2, out, out_cond})) {
    BSR_DISPATCH_FLOAT_AND_HALF(x.scalar_type(), "dpcb_epilogue_cuda", [&] {
      const scalar_t *a = x.const_data_ptr<scalar_t>(), *b = f1.const_data_ptr<scalar_t>();
      const scalar_t *c = xc.const_data_ptr<scalar_t>(), *d = f2.const_data_ptr<scalar_t>();
      scalar_t *o = out.mutable_data_ptr<scalar_t>(), *oc = out_cond.mutable_data_ptr<scalar_t>();
      with_flat_types<scalar_t>(total, {a, b, c, d, o, oc}, [&](auto index, auto V) {
        using index_t = decltype(index);
        launch_flat<decltype(V)::value, index_t>(epilogue_flat_kernel<scalar_t, index_t, decltype(V)::value>, total,
                                                 a, b, c, d, o, oc);
      });
    });
    return {out, out_cond};
  }
  BSR_DISPATCH_FLOAT_AND_HALF(x.scalar_type(), "dpcb_epilogue_cuda", [&] {
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      const auto strides = [&](const at::Tensor& t, bool broadcast = false) {
        return narrow<index_t>(plane_strides(t, broadcast));
      };
      launch_kernel(epilogue_kernel<scalar_t, index_t>, grid_blocks(total), x.const_data_ptr<scalar_t>(), strides(x),
                    f1.const_data_ptr<scalar_t>(), strides(f1), xc.const_data_ptr<scalar_t>(), strides(xc, pointwise),
                    f2.const_data_ptr<scalar_t>(), strides(f2, pointwise), out.mutable_data_ptr<scalar_t>(),
                    strides(out), out_cond.mutable_data_ptr<scalar_t>(), strides(out_cond, pointwise),
                    static_cast<index_t>(x.size(1)), static_cast<index_t>(x.size(2) * x.size(3)), pointwise,
                    static_cast<index_t>(total));
    });
  });
  return {out, out_cond};
}

std::tuple<at::Tensor, at::Tensor> epilogue_backward_cuda(const at::Tensor& grad_img_in, const at::Tensor& grad_cond_in,
                                                          const c10::optional<at::Tensor>& f1_in,
                                                          const c10::optional<at::Tensor>& f2_in, bool channels_last) {
  count_call("_dpcb_epilogue_backward.cuda");
  check_cuda(grad_img_in, "grad_img");
  const bool pointwise = check_epilogue_backward(grad_img_in, grad_cond_in, f1_in, f2_in);
  const bool has_f1 = present(f1_in), has_f2 = present(f2_in);
  const c10::cuda::CUDAGuard guard(grad_img_in.device());
  const at::Tensor gi = dense(grad_img_in), gc = dense(grad_cond_in);
  const at::Tensor f1 = has_f1 ? dense(*f1_in) : gi, f2 = has_f2 ? dense(*f2_in) : gc;  // gi, gc: never read
  const auto options = [&](const at::Tensor& like) { return like.options().memory_format(layout(channels_last)); };
  at::Tensor grad_f1 = has_f2 ? at::empty(gi.sizes(), options(gi)) : gi.new_empty({0});
  at::Tensor grad_f2 = has_f1 ? at::empty(gc.sizes(), options(gc)) : gi.new_empty({0});
  const int64_t total = gi.numel(), channels = gi.size(1), pixels = gi.size(2) * gi.size(3);
  if (total == 0) return {grad_f1, grad_f2};
  const at::Tensor& written1 = has_f2 ? grad_f1 : gi;  // the outputs, or a tensor in gi's order when absent
  const at::Tensor& written2 = has_f1 ? grad_f2 : gi;
  if (!pointwise && one_order({gi, gc, f1, f2, written1, written2})) {
    BSR_DISPATCH_FLOAT_AND_HALF(gi.scalar_type(), "dpcb_epilogue_backward_cuda", [&] {
      const scalar_t *a = gi.const_data_ptr<scalar_t>(), *b = gc.const_data_ptr<scalar_t>();
      const scalar_t *c = f1.const_data_ptr<scalar_t>(), *d = f2.const_data_ptr<scalar_t>();
      scalar_t* g1 = has_f2 ? grad_f1.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* g2 = has_f1 ? grad_f2.mutable_data_ptr<scalar_t>() : nullptr;
      with_flat_types<scalar_t>(total, {a, b, c, d, g1, g2}, [&](auto index, auto V) {
        using index_t = decltype(index);
        launch_flat<decltype(V)::value, index_t>(epilogue_grad_flat_kernel<scalar_t, index_t, decltype(V)::value>,
                                                 total, a, b, c, d, g1, g2);
      });
    });
    return {grad_f1, grad_f2};
  }
  const PlaneStrides sg1 = has_f2 ? plane_strides(grad_f1) : plane_strides(gi);
  const PlaneStrides sg2 = has_f1 ? plane_strides(grad_f2, pointwise) : plane_strides(gc, pointwise);
  BSR_DISPATCH_FLOAT_AND_HALF(gi.scalar_type(), "dpcb_epilogue_backward_cuda", [&] {
    scalar_t* g1 = has_f2 ? grad_f1.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* g2 = has_f1 ? grad_f2.mutable_data_ptr<scalar_t>() : nullptr;
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      const auto strides = [&](const at::Tensor& t, bool broadcast = false) {
        return narrow<index_t>(plane_strides(t, broadcast));
      };
      launch_kernel(epilogue_grad_kernel<scalar_t, index_t>, grid_blocks(total), gi.const_data_ptr<scalar_t>(),
                    strides(gi), gc.const_data_ptr<scalar_t>(), strides(gc, pointwise), f1.const_data_ptr<scalar_t>(),
                    strides(f1), f2.const_data_ptr<scalar_t>(), strides(f2, pointwise), g1, narrow<index_t>(sg1),
                    pointwise ? nullptr : g2, narrow<index_t>(sg2), static_cast<index_t>(channels),
                    static_cast<index_t>(pixels), static_cast<index_t>(total));
    });
    if (pointwise && has_f1)  // one block per (n, c) plane
      launch_kernel(grad_cond_plane_kernel<scalar_t>, gi.size(0) * channels, gi.const_data_ptr<scalar_t>(),
                    plane_strides(gi), gc.const_data_ptr<scalar_t>(), plane_strides(gc, true),
                    f1.const_data_ptr<scalar_t>(), plane_strides(f1), g2, sg2, channels, pixels);
  });
  return {grad_f1, grad_f2};
}

at::Tensor relayout_cuda(const at::Tensor& x_in, const c10::optional<at::Tensor>& other_in, bool channels_last) {
  count_call("_relayout.cuda");
  check_cuda(x_in, "x");
  check_relayout(x_in, other_in);
  const bool has_other = present(other_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = dense(x_in), other = has_other ? dense(*other_in) : x;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(layout(channels_last)));
  const int64_t total = x.numel();
  if (total == 0) return out;
  BSR_DISPATCH_FLOAT_AND_HALF(x.scalar_type(), "relayout_cuda", [&] {
    with_index_type(total, [&](auto index) {
      using index_t = decltype(index);
      const auto strides = [](const at::Tensor& t) { return narrow<index_t>(plane_strides(t)); };
      launch_kernel(relayout_kernel<scalar_t, index_t>, grid_blocks(total), x.const_data_ptr<scalar_t>(), strides(x),
                    has_other ? other.const_data_ptr<scalar_t>() : nullptr, strides(other),
                    out.mutable_data_ptr<scalar_t>(), strides(out), static_cast<index_t>(x.size(1)),
                    static_cast<index_t>(x.size(2) * x.size(3)), static_cast<index_t>(total));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CUDA, m) {
  m.impl("_leaky_relu_", &leaky_relu_cuda);
  m.impl("_leaky_relu_backward_", &leaky_relu_backward_cuda);
  m.impl("_dpcb_epilogue", &epilogue_cuda);
  m.impl("_dpcb_epilogue_backward", &epilogue_backward_cuda);
  m.impl("_relayout", &relayout_cuda);
}

}  // namespace dpcb
}  // namespace bsrops
