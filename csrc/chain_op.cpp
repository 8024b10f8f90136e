// torch.ops.lowrank_cuda.chain: schema, argument checks and the Meta (fake-tensor) kernel.
// The CUDA kernel is registered in chain_cuda.cpp. This file needs no CUDA headers, so it
// also builds against a CPU-only torch (tests/test_csrc_compile.py loads it that way).
//
//   chain(Tensor a, Tensor b, Tensor c, Tensor? bias, bool write_intermediate)
//       -> (Tensor out, Tensor intermediate)
//
// out = (a·b)·c + bias as a contiguous [M, N] tensor in a's dtype; intermediate = a·b as a
// contiguous [M, r] tensor (rounded to a's dtype), or an empty [0, r] tensor when
// write_intermediate is false. a [M, K], b [K, r], c [r, N] may have any strides.

#include "chain_op.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

namespace lowrank_kernels {

// SymInt-aware so the Meta kernel also serves dynamic shapes under torch.compile.
void check_chain_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                      const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(a.dim() == 2, "lowrank_cuda::chain: a must be 2-D [M, K], got ", a.dim(),
                    "-D tensor of shape ", a.sym_sizes());
  TORCH_CHECK_VALUE(b.dim() == 2, "lowrank_cuda::chain: b must be 2-D [K, r], got ", b.dim(),
                    "-D tensor of shape ", b.sym_sizes());
  TORCH_CHECK_VALUE(c.dim() == 2, "lowrank_cuda::chain: c must be 2-D [r, N], got ", c.dim(),
                    "-D tensor of shape ", c.sym_sizes());
  TORCH_CHECK_VALUE(b.sym_size(0) == a.sym_size(1),
                    "lowrank_cuda::chain: b.shape[0] must equal a.shape[1] (K = ",
                    a.sym_size(1), "), got b of shape ", b.sym_sizes());
  TORCH_CHECK_VALUE(b.sym_size(1) >= 1, "lowrank_cuda::chain: rank must be >= 1, got b of shape ",
                    b.sym_sizes());
  TORCH_CHECK_VALUE(c.sym_size(0) == b.sym_size(1),
                    "lowrank_cuda::chain: c.shape[0] must equal b.shape[1] (r = ", b.sym_size(1),
                    "), got c of shape ", c.sym_sizes());
  const auto dtype = a.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
                       dtype == at::kDouble,
                   "lowrank_cuda::chain: a must be float16, bfloat16, float32 or float64, got ",
                   dtype);
  TORCH_CHECK_TYPE(b.scalar_type() == dtype, "lowrank_cuda::chain: b must have a's dtype (",
                   dtype, "), got ", b.scalar_type());
  TORCH_CHECK_TYPE(c.scalar_type() == dtype, "lowrank_cuda::chain: c must have a's dtype (",
                   dtype, "), got ", c.scalar_type());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == c.sym_size(1),
                      "lowrank_cuda::chain: bias must have shape [N] = [", c.sym_size(1),
                      "], got ", bias->sym_sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == dtype,
                     "lowrank_cuda::chain: bias must have a's dtype (", dtype, "), got ",
                     bias->scalar_type());
  }
}

namespace {

std::tuple<at::Tensor, at::Tensor> chain_meta(const at::Tensor& a, const at::Tensor& b,
                                              const at::Tensor& c,
                                              const std::optional<at::Tensor>& bias,
                                              bool write_intermediate) {
  check_chain_args(a, b, c, bias);
  auto out = at::empty_symint({a.sym_size(0), c.sym_size(1)}, a.options());
  auto z = at::empty_symint({write_intermediate ? a.sym_size(0) : c10::SymInt(0), b.sym_size(1)},
                            a.options());
  return {out, z};
}

}  // namespace
}  // namespace lowrank_kernels

TORCH_LIBRARY(lowrank_cuda, m) {
  m.def(
      "chain(Tensor a, Tensor b, Tensor c, Tensor? bias, bool write_intermediate) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lowrank_cuda, Meta, m) {
  m.impl("chain", TORCH_FN(lowrank_kernels::chain_meta));
}
