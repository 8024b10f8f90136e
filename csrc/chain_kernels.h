// Interface between the ATen op (chain_op.cpp) and the CUDA kernels (chain_kernels.cu).
//
// Deliberately free of torch headers: the kernels file then compiles in seconds, and the
// same file builds on the CPU under the emulation shim in csrc/emu/ (see docs/cuda.md).
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef LRK_EMULATE
#include <cuda_runtime_api.h>
#endif

namespace lowrank_kernels {

// Element type of every operand of one chain call (they all share it).
enum class ChainDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out[M, N] = (a[M, K] · b[K, R]) · c[R, N] + bias[N], and optionally z = a · b.
//
// Operand strides are in elements and may be anything (transposed views included).
// `out` is contiguous [M, N]; `z` is contiguous [M, R] or null. `bias` may be null.
struct ChainArgs {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;
  void* z = nullptr;
  int64_t M = 0, K = 0, N = 0, R = 0;
  int64_t stride_am = 0, stride_ak = 0;
  int64_t stride_bk = 0, stride_br = 0;
  int64_t stride_cr = 0, stride_cn = 0;
  int64_t stride_bias = 0;
};

// The launch parameters picked for one call (exposed for tests and docs).
struct ChainPlan {
  bool fused = false;     // false: the caller must use the two-GEMM fallback
  bool tensor_cores = false;
  int block_m = 0;        // rows of A per thread block
  int split = 1;          // thread blocks sharing one row block (split over N)
  int64_t r_pad = 0;      // rank rounded up to a multiple of 16
  size_t smem_bytes = 0;  // dynamic shared memory per block
};

// Device facts the plan depends on.
struct ChainDeviceInfo {
  int cc_major = 0;
  int cc_minor = 0;
  int num_sms = 1;
  size_t max_smem_optin = 48 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

// Pure function of shape, dtype and device: which kernel, tile size and split.
ChainPlan plan_chain(int64_t M, int64_t N, int64_t R, ChainDType dtype,
                     const ChainDeviceInfo& device);

// Queries the current CUDA device (cudaGetDevice) for plan_chain.
ChainDeviceInfo query_current_device();

// Launches the fused kernel on `stream` for the current device if plan.fused, else does
// nothing. Returns plan.fused. Every launch is checked (C10_CUDA_KERNEL_LAUNCH_CHECK).
bool launch_chain(const ChainArgs& args, ChainDType dtype, const ChainPlan& plan,
                  cudaStream_t stream);

}  // namespace lowrank_kernels
