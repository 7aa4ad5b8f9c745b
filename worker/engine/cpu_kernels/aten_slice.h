// The slice of ATen the kernel sources use: at::Tensor, at::empty/empty_like, at::parallel_for and
// TORCH_CHECK. Not <torch/extension.h>: that header (pybind11, torch's Python API and every ATen
// operation) took about 45 of a kernel file's 50 s to compile on a 2-core EPYC (7.5 s for this set
// alone); only bindings.cpp, which makes the Python module, includes it.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
