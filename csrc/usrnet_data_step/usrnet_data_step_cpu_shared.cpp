// The "cpu_shared" backend of bsrops::usrnet_solve: the per-element functions of
// usrnet_data_step.h, which are what the CUDA kernels run, looped on the CPU over the same
// lanes (pair_lane: one work item per pair {w, -w} of LR frequencies), reading a broadcast FBFy
// as they do, so that the CPU tests check the GPU maths.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>

#include "../common/call_counter.h"
#include "usrnet_data_step.h"
#include "usrnet_data_step_cpu.h"

namespace bsrops {
namespace usrnet_data_step {
namespace {

at::Tensor solve_shared(const at::Tensor& z, const at::Tensor& fb, const at::Tensor& fbfy,
                        const at::Tensor& f2b_mean, const at::Tensor& alpha, int64_t scale) {
  count_call("_usrnet_solve_shared.cpu");
  const auto pass = []<typename T>(const Geometry& g, T* spectrum, const T* fb, const T* fbfy, const T* f2b_mean,
                                   const T* alpha) {
    const int64_t lanes = pair_lanes(g);
    at::parallel_for(0, g.N * g.C, grain(g, lanes, 1), [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc)
        for (int64_t lane = 0, u, v; lane < lanes; ++lane)
          if (pair_lane(g, lane, u, v)) solve_element(spectrum, fb, fbfy, f2b_mean, alpha, g, nc / g.C, nc % g.C, u, v);
    });
  };
  return solve_on_cpu(z, fb, fbfy, f2b_mean, alpha, scale, pass, /*reads_broadcast_fbfy=*/true);
}

SolveGrads solve_backward_shared(const at::Tensor& grad_x, const at::Tensor& z, const at::Tensor& fb,
                                 const at::Tensor& fbfy, const at::Tensor& f2b_mean, const at::Tensor& alpha,
                                 int64_t scale, std::array<bool, 5> output_mask) {
  count_call("_usrnet_solve_shared_backward.cpu");
  const auto pass = []<typename T>(const Geometry& g, const Grads<T>& out, const T* grad_half, const T* z_half,
                                   const T* fb, const T* fbfy, const T* f2b_mean, const T* alpha) {
    // grad_alpha's share of each lane into out.alpha_partial (N, h, w), zeros, at the lane's (u, v)
    const int64_t lanes = pair_lanes(g);
    at::parallel_for(0, g.N, grain(g, lanes, 2 * g.C), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        for (int64_t lane = 0, u, v; lane < lanes; ++lane)
          if (pair_lane(g, lane, u, v)) {
            const T share = solve_backward_element(grad_half, z_half, fb, fbfy, f2b_mean, alpha, out, g, n, u, v);
            if (out.alpha_partial) out.alpha_partial[(n * g.h + u) * g.w + v] = share;
          }
    });
  };
  return solve_backward_on_cpu(grad_x, z, fb, fbfy, f2b_mean, alpha, scale, output_mask, true, pass);
}

}  // namespace

TORCH_LIBRARY_IMPL(bsrops, CPU, m) {
  m.impl("_usrnet_solve_shared", &solve_shared);
  m.impl("_usrnet_solve_shared_backward", &solve_backward_shared);
}

}  // namespace usrnet_data_step
}  // namespace bsrops
