// The Python module fastdiff._C. Ops register themselves with the dispatcher from static
// initialisers (ops.cpp, cpu/*.cpp, cuda/bindings.cpp); this file only adds build facts.
#include <Python.h>

#include "cpu/isa.h"

#ifndef FASTDIFF_CUDA_ARCHS
#define FASTDIFF_CUDA_ARCHS ""
#endif

static PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastdiff::cpu::isa_name(fastdiff::cpu::best_isa()));
}

static PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU kernels dispatch to on this machine."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastdiff compiled kernels", -1, methods};

PyMODINIT_FUNC PyInit__C() {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef FASTDIFF_WITH_CUDA
  PyModule_AddObject(m, "cuda_compiled", Py_NewRef(Py_True));
#else
  PyModule_AddObject(m, "cuda_compiled", Py_NewRef(Py_False));
#endif
  PyModule_AddStringConstant(m, "cuda_archs", FASTDIFF_CUDA_ARCHS);
  return m;
}
