// advise_huge_pages(t): asks Linux to back a freshly allocated, large CPU tensor with transparent
// huge pages before anything touches it. A tensor of tens of MB is a fresh mmap on every call
// with glibc's malloc (above its mmap threshold), so writing it first costs one page fault and
// one page clear per 4 KiB; with huge pages it is one per 2 MiB. This is the advice torch's own
// allocator gives every large block when THP_MEM_ALLOC_ENABLE=1, applied here to the op's own
// large outputs only; tensors with fewer than two whole 2 MiB pages are left alone. It is advice:
// where THP is off ("never"), not supported or the call fails, nothing changes; results never do.
// Elsewhere than Linux it does nothing.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace bsrops {

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t first = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1);      // the 2 MiB pages wholly inside t
  const uintptr_t end = (first + t.nbytes()) & ~(kHuge - 1);
  if (!t.is_cpu() || end < begin + 2 * kHuge) return;              // too small to matter
  (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace bsrops
