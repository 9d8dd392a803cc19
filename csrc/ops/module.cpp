// The importable `tilesparse._C`: an empty Python module whose only job is to
// load this library so the TORCH_LIBRARY registrations run.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "tilesparse operators", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
