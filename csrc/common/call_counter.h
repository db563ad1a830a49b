// Counts kernel launches per "<op>.<backend>" name, so that tests can prove which
// backend ran (bsrops.kernel_calls()). One locked increment per op call.
#pragma once

namespace bsrops {
void count_call(const char* kernel_name);
}
