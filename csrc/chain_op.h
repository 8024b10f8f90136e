// Shared declarations of the lowrank_cuda::chain op (chain_op.cpp, chain_cuda.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace lowrank_kernels {

// Validates shapes and dtypes of chain(a [M, K], b [K, r], c [r, N], bias [N] | None);
// throws ValueError/TypeError naming the argument. SymInt-aware (usable on fake tensors).
void check_chain_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                      const std::optional<at::Tensor>& bias);

}  // namespace lowrank_kernels
