// present(t): an optional tensor argument (`Tensor?` in a schema) that was given, i.e. holds a
// defined tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace bsrops {

inline bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace bsrops
