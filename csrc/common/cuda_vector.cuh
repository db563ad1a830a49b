// Vector loads and stores of the elementwise CUDA kernels: a Pack of V values moved as one access of
// V * sizeof(T) bytes, 16 at most (four float32, eight float16 / bfloat16, two float64 values), where
// every operand is aligned to it; V = 1 is the scalar access of the fallback.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace bsrops {

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Values of T in a 16-byte pack.
template <typename T>
constexpr int kPackSize = sizeof(T) <= 16 ? static_cast<int>(16 / sizeof(T)) : 1;

// Pack `pack` of the V-value packs that p points at (p aligned to one).
template <int V, typename T>
__device__ inline Pack<T, V> load_pack(const T* p, int64_t pack) {
  return reinterpret_cast<const Pack<T, V>*>(p)[pack];
}
template <int V, typename T>
__device__ inline void store_pack(T* p, int64_t pack, const Pack<T, V>& value) {
  reinterpret_cast<Pack<T, V>*>(p)[pack] = value;
}

// f(std::integral_constant<int, V>{}): V = kPackSize<T> when `total` elements are whole packs and every
// non-null pointer is aligned to a pack, else V = 1.
template <typename T, typename F>
void with_pack_size(int64_t total, std::initializer_list<const void*> pointers, const F& f) {
  constexpr int V = kPackSize<T>;
  bool fits = total % V == 0;
  for (const void* p : pointers) fits = fits && reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * V) == 0;
  if (fits) {
    f(std::integral_constant<int, V>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

}  // namespace bsrops
