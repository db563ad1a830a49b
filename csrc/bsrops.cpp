// The Python module bsrops._C: the launch counter, the build information and the Python type of
// dpcb's C++ autograd node. The op schemas
// are defined in Python (bsrops/ops/<op>.py); each op's kernels register themselves for them
// in their own TORCH_LIBRARY_IMPL blocks (csrc/<op>/), which run when this module loads.
#include <Python.h>

#include <map>
#include <mutex>
#include <string>

#include "common/call_counter.h"

#ifndef BSROPS_TORCH_VERSION
#define BSROPS_TORCH_VERSION "unknown"
#endif
#ifndef BSROPS_WITH_CUDA
#define BSROPS_WITH_CUDA 0
#endif
#ifndef BSROPS_CUDA_ARCHS
#define BSROPS_CUDA_ARCHS ""
#endif
#ifdef _OPENMP
#define BSROPS_WITH_OPENMP 1
#else
#define BSROPS_WITH_OPENMP 0
#endif

namespace bsrops {
namespace {
std::mutex counter_mutex;
std::map<std::string, long long>& counters() {
  static std::map<std::string, long long> table;
  return table;
}
}  // namespace

namespace dpcb {
void register_python_node();  // dpcb_autograd.cpp: the Python type of its autograd node
}  // namespace dpcb

void count_call(const char* kernel_name) {
  std::lock_guard<std::mutex> lock(counter_mutex);
  ++counters()[kernel_name];
}
}  // namespace bsrops

static PyObject* kernel_calls(PyObject*, PyObject*) {
  std::lock_guard<std::mutex> lock(bsrops::counter_mutex);
  PyObject* result = PyDict_New();
  for (const auto& entry : bsrops::counters()) {
    PyObject* value = PyLong_FromLongLong(entry.second);
    PyDict_SetItemString(result, entry.first.c_str(), value);
    Py_DECREF(value);
  }
  return result;
}

static PyMethodDef methods[] = {
    {"kernel_calls", kernel_calls, METH_NOARGS, "Launch counts of the native kernels, by '<op>.<backend>'."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "bsrops native kernels", -1, methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  bsrops::dpcb::register_python_node();
  PyModule_AddStringConstant(m, "TORCH_VERSION", BSROPS_TORCH_VERSION);
  PyModule_AddIntConstant(m, "WITH_CUDA", BSROPS_WITH_CUDA);
  PyModule_AddIntConstant(m, "WITH_OPENMP", BSROPS_WITH_OPENMP);
  PyModule_AddStringConstant(m, "CUDA_ARCHS", BSROPS_CUDA_ARCHS);
  return m;
}
