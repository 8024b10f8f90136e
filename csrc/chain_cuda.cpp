// The CUDA kernel of lowrank_cuda::chain (schema and Meta kernel: chain_op.cpp).
//
// float16/bfloat16/float32 run the fused kernels of chain_kernels.cu on the current CUDA
// stream. float64, and shapes whose on-chip intermediate does not fit in shared memory
// (very large r) or dtypes the device has no tensor-core path for, run two ATen GEMMs
// (cuBLAS) with the same numerics: Z rounded to the input dtype, then Z·c + bias.

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "chain_kernels.h"
#include "chain_op.h"

namespace lowrank_kernels {
namespace {

void check_same_device(const at::Tensor& a, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == a.device(), "lowrank_cuda::chain: ", name,
              " must be on a's device (", a.device(), "), got ", t.device());
}

// The two-GEMM path: same rounding of Z as the fused kernels (to the input dtype).
std::tuple<at::Tensor, at::Tensor> chain_aten(const at::Tensor& a, const at::Tensor& b,
                                              const at::Tensor& c,
                                              const std::optional<at::Tensor>& bias,
                                              bool write_intermediate) {
  at::Tensor z = at::mm(a, b);
  at::Tensor out = bias.has_value() ? at::addmm(*bias, z, c) : at::mm(z, c);
  if (!out.is_contiguous()) out = out.contiguous();
  if (!write_intermediate) {
    z = at::empty({0, b.size(1)}, a.options());
  } else if (!z.is_contiguous()) {
    z = z.contiguous();
  }
  return {out, z};
}

std::tuple<at::Tensor, at::Tensor> chain_cuda(const at::Tensor& a, const at::Tensor& b,
                                              const at::Tensor& c,
                                              const std::optional<at::Tensor>& bias,
                                              bool write_intermediate) {
  check_chain_args(a, b, c, bias);
  TORCH_CHECK(a.is_cuda(), "lowrank_cuda::chain: a must be a CUDA tensor, got ", a.device());
  check_same_device(a, b, "b");
  check_same_device(a, c, "c");
  if (bias.has_value()) check_same_device(a, *bias, "bias");

  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t M = a.size(0), K = a.size(1), r = b.size(1), N = c.size(1);
  if (a.scalar_type() == at::kDouble) return chain_aten(a, b, c, bias, write_intermediate);

  auto out = at::empty({M, N}, a.options());
  auto z = at::empty({write_intermediate ? M : 0, r}, a.options());
  if (M == 0) return {out, z};

  const ChainDType dtype = a.scalar_type() == at::kFloat  ? ChainDType::kFloat32
                           : a.scalar_type() == at::kHalf ? ChainDType::kFloat16
                                                          : ChainDType::kBFloat16;
  const ChainPlan plan = plan_chain(M, N, r, dtype, query_current_device());
  if (!plan.fused) return chain_aten(a, b, c, bias, write_intermediate);

  ChainArgs args;
  args.a = a.data_ptr();
  args.b = b.data_ptr();
  args.c = c.data_ptr();
  args.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  args.out = out.data_ptr();
  args.z = write_intermediate ? z.data_ptr() : nullptr;
  args.M = M;
  args.K = K;
  args.N = N;
  args.R = r;
  args.stride_am = a.stride(0);
  args.stride_ak = a.stride(1);
  args.stride_bk = b.stride(0);
  args.stride_br = b.stride(1);
  args.stride_cr = c.stride(0);
  args.stride_cn = c.stride(1);
  args.stride_bias = bias.has_value() ? bias->stride(0) : 0;
  launch_chain(args, dtype, plan, c10::cuda::getCurrentCUDAStream(a.get_device()).stream());
  return {out, z};
}

}  // namespace
}  // namespace lowrank_kernels

TORCH_LIBRARY_IMPL(lowrank_cuda, CUDA, m) {
  m.impl("chain", TORCH_FN(lowrank_kernels::chain_cuda));
}
