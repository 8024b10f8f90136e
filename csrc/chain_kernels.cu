// Fused rank-r chain  out[M, N] = (A[M, K] · B[K, R]) · C[R, N] + bias[N]  (docs/design.md).
//
// One thread block owns BLOCK_M rows of A. Stage 1 computes that row block's intermediate
// Z = A·B into shared memory (fp32 accumulation, rank padded to a multiple of 16), stage 2
// loops over the output column tiles and writes Z·C + bias. Z is never recomputed within a
// block; when M / BLOCK_M blocks cannot fill the GPU, `split` blocks share one row block
// (grid axis y), each recomputing its Z and writing every split-th column tile — the same
// bounded-recompute small-M scheme as the Triton kernel. Only split 0 writes Z to memory.
//
// fp16/bf16 use tensor cores through WMMA (16x16x16, fp32 accumulators); Z is rounded to
// the input dtype before the second product, exactly where PyTorch's two-GEMM chain rounds
// it. fp32 runs a SIMT kernel (exact fp32 FMAs, no TF32) and keeps Z in fp32.
//
// All operand tiles are staged through shared memory by scalar loads whose iteration order
// follows whichever stride is 1, so any strides work (the backward feeds Uᵀ, Vᵀ views).
// Every global offset is computed in int64.
//
// This file includes no torch headers so that it also builds on the CPU against the
// emulation shim in csrc/emu/ (LRK_EMULATE), which is how its logic is tested without a GPU.

#include "chain_kernels.h"

#include <algorithm>
#include <climits>
#include <type_traits>

#ifndef LRK_EMULATE
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#define LRK_HD __host__ __device__
#define LRK_UNROLL _Pragma("unroll")
#define LRK_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#define LRK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace lowrank_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr size_t kDefaultSmem = 48 * 1024;  // usable without cudaFuncSetAttribute

// Tensor-core kernel tiles.
constexpr int kTcBK = 32;    // stage 1: K per shared-memory tile
constexpr int kTcRC = 128;   // stage 1: columns of Z per pass over K (one 16-wide column per warp)
constexpr int kTcBN = 64;    // stage 2: output tile width
constexpr int kTcRK = 32;    // stage 2: rank per shared-memory tile of C
constexpr int kTcPad = 8;    // 16-bit elements of row padding: keeps ldm % 8 == 0, spreads banks

// fp32 SIMT kernel tiles (16 x 16 threads, each a TM x 4 micro tile).
constexpr int kF32BK = 16;   // stage 1: K per shared-memory tile
constexpr int kF32CW = 64;   // stage 1: columns of Z per pass over K; stage 2: output tile width
constexpr int kF32RK = 16;   // stage 2: rank per shared-memory tile of C
constexpr int kF32Pad = 4;

// Occupancy promised to ptxas through __launch_bounds__: with two resident blocks it may use
// at most 128 registers per thread. The 64- and 128-row tiles hold 4-8 accumulator fragments
// per warp and spill under that cap (nvcc 13, sm_80 and sm_90), so they ask for one block and
// up to 255 registers; tests/test_csrc_compile.py fails on any spill.
LRK_HD constexpr int min_blocks_per_sm(int block_m) { return block_m >= 64 ? 1 : 2; }

LRK_HD constexpr size_t align128(size_t x) { return (x + 127) & ~static_cast<size_t>(127); }
LRK_HD constexpr size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

// ---- shared-memory budgets (bytes); the kernels carve their buffers in the same order ----

// Tensor cores: [Z: BLOCK_M x (r_pad + 8) of T][stage tiles (A,B) or (C)][per-warp fp32 16x16].
LRK_HD constexpr size_t tc_zs_bytes(int block_m, int64_t r_pad) {
  return align128(static_cast<size_t>(block_m) * static_cast<size_t>(r_pad + kTcPad) * 2);
}
LRK_HD constexpr size_t tc_stage_bytes(int block_m) {
  return align128(max_size(
      static_cast<size_t>(block_m) * (kTcBK + kTcPad) * 2 +
          static_cast<size_t>(kTcBK) * (kTcRC + kTcPad) * 2,
      static_cast<size_t>(kTcRK) * (kTcBN + kTcPad) * 2));
}
LRK_HD constexpr size_t tc_smem_bytes(int block_m, int64_t r_pad) {
  return tc_zs_bytes(block_m, r_pad) + tc_stage_bytes(block_m) +
         static_cast<size_t>(kWarps) * 256 * sizeof(float);
}

// fp32: [Z: BLOCK_M x (r_pad + 1) floats][stage tiles (Aᵀ,B) or (C)].
LRK_HD constexpr size_t f32_zs_bytes(int block_m, int64_t r_pad) {
  return align128(static_cast<size_t>(block_m) * static_cast<size_t>(r_pad + 1) * 4);
}
LRK_HD constexpr size_t f32_stage_bytes(int block_m) {
  return align128(max_size(
      static_cast<size_t>(kF32BK) * (block_m + kF32Pad) * 4 +
          static_cast<size_t>(kF32BK) * (kF32CW + kF32Pad) * 4,
      static_cast<size_t>(kF32RK) * (kF32CW + kF32Pad) * 4));
}
LRK_HD constexpr size_t f32_smem_bytes(int block_m, int64_t r_pad) {
  return f32_zs_bytes(block_m, r_pad) + f32_stage_bytes(block_m);
}

// ---- element conversions (torch builds with __CUDA_NO_HALF_CONVERSIONS__: all explicit) ----

template <typename T>
struct Num;

template <>
struct Num<float> {
  __device__ __forceinline__ static float to_float(float x) { return x; }
  __device__ __forceinline__ static float from_float(float x) { return x; }
};

template <>
struct Num<__half> {
  __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Num<__nv_bfloat16> {
  __device__ __forceinline__ static float to_float(__nv_bfloat16 x) {
    return __bfloat162float(x);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
};

// Copies the ROWS x COLS tile at (row0, col0) of a strided [rows, cols] matrix into shared
// memory (dst[i * ld + j], or dst[j * ld + i] when TRANSPOSE), zero outside the matrix.
// Consecutive threads walk the dimension whose stride is 1, so global loads coalesce for
// row-major and column-major operands alike.
template <int ROWS, int COLS, bool TRANSPOSE, typename T>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, int ld, const T* __restrict__ src,
                                          int64_t stride0, int64_t stride1, int64_t row0,
                                          int64_t col0, int64_t rows, int64_t cols) {
  const bool rows_fastest = stride0 == 1 && stride1 != 1;
  const T zero = Num<T>::from_float(0.0f);
  for (int idx = static_cast<int>(threadIdx.x); idx < ROWS * COLS; idx += kThreads) {
    const int i = rows_fastest ? idx % ROWS : idx / COLS;
    const int j = rows_fastest ? idx / ROWS : idx % COLS;
    const int64_t r = row0 + i;
    const int64_t c = col0 + j;
    T v = zero;
    if (r < rows && c < cols) v = src[r * stride0 + c * stride1];
    dst[TRANSPOSE ? j * ld + i : i * ld + j] = v;
  }
}

// ---- tensor-core kernel (fp16 / bf16) ----

template <typename T>
LRK_HD constexpr bool tc_compiled_for_this_arch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // bf16 WMMA needs sm_80; fp16 WMMA sm_70. The host never launches what is not compiled.
  return !std::is_same<T, __nv_bfloat16>::value && __CUDA_ARCH__ >= 700;
#else
  return true;
#endif
}

template <typename T, int BLOCK_M>
__device__ __forceinline__ void chain_tc_body(const ChainArgs& p, int64_t r_pad) {
  namespace wmma = nvcuda::wmma;
  static_assert(BLOCK_M % 32 == 0, "BLOCK_M must be a multiple of 32");
  constexpr int NF1 = BLOCK_M / 16;  // stage 1: fragments per warp (one 16-wide Z column)
  constexpr int NF2 = BLOCK_M / 32;  // stage 2: fragments per warp
  constexpr int LDA = kTcBK + kTcPad;
  constexpr int LDB = kTcRC + kTcPad;
  constexpr int LDC = kTcBN + kTcPad;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
  using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

  LRK_DYNAMIC_SMEM(smem);
  const int64_t zld = r_pad + kTcPad;
  T* zs = reinterpret_cast<T*>(smem);
  unsigned char* stage = smem + tc_zs_bytes(BLOCK_M, r_pad);
  T* as = reinterpret_cast<T*>(stage);  // stage 1: A tile [BLOCK_M][LDA]
  T* bs = as + BLOCK_M * LDA;           // stage 1: B tile [kTcBK][LDB]
  T* cs = reinterpret_cast<T*>(stage);  // stage 2: C tile [kTcRK][LDC] (aliases A, B)
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  float* scratch = reinterpret_cast<float*>(stage + tc_stage_bytes(BLOCK_M)) + warp * 256;

  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  const T* c = static_cast<const T*>(p.c);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  T* zg = static_cast<T*>(p.z);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BLOCK_M;
  const bool write_z = zg != nullptr && blockIdx.y == 0;

  // Stage 1: Z[row block, :] = A[row block, :] · B, kTcRC columns per pass over K.
  // Warp w owns Z columns chunk0 + 16w .. + 15 for all BLOCK_M rows (fragment i = rows 16i..).
  for (int64_t chunk0 = 0; chunk0 < r_pad; chunk0 += kTcRC) {
    const int64_t col0 = chunk0 + 16 * warp;
    const bool active = col0 < r_pad;  // warp-uniform
    FragAcc acc[NF1];
    LRK_UNROLL
    for (int i = 0; i < NF1; ++i) wmma::fill_fragment(acc[i], 0.0f);
    for (int64_t k0 = 0; k0 < p.K; k0 += kTcBK) {
      load_tile<BLOCK_M, kTcBK, false>(as, LDA, a, p.stride_am, p.stride_ak, row0, k0, p.M, p.K);
      load_tile<kTcBK, kTcRC, false>(bs, LDB, b, p.stride_bk, p.stride_br, k0, chunk0, p.K, p.R);
      __syncthreads();
      if (active) {
        LRK_UNROLL
        for (int kk = 0; kk < kTcBK; kk += 16) {
          FragB fb;
          wmma::load_matrix_sync(fb, bs + kk * LDB + 16 * warp, LDB);
          LRK_UNROLL
          for (int i = 0; i < NF1; ++i) {
            FragA fa;
            wmma::load_matrix_sync(fa, as + 16 * i * LDA + kk, LDA);
            wmma::mma_sync(acc[i], fa, fb, acc[i]);
          }
        }
      }
      __syncthreads();
    }
    if (active) {
      // Round to T once: the on-chip Z and the written intermediate are the same values.
      LRK_UNROLL
      for (int i = 0; i < NF1; ++i) {
        wmma::store_matrix_sync(scratch, acc[i], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int rr = e / 16;
          const int cc = e % 16;
          const int64_t grow = row0 + 16 * i + rr;
          const int64_t gcol = col0 + cc;
          // Padded rank lanes must be exact zeros for stage 2 even when x holds an inf
          // (inf·0 = NaN there would poison every output of the row).
          const T v = Num<T>::from_float(gcol < p.R ? scratch[e] : 0.0f);
          zs[(16 * i + rr) * zld + col0 + cc] = v;
          if (write_z && grow < p.M && gcol < p.R) zg[grow * p.R + gcol] = v;
        }
        __syncwarp();
      }
    }
  }
  __syncthreads();  // Z complete; the stage area is free for C tiles

  // Stage 2: out tiles n0, n0 + split·BN, …; warp w owns columns 16(w % 4) and row
  // fragments w / 4 + 2j of each [BLOCK_M, kTcBN] tile.
  const int fn = warp % 4;
  for (int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTcBN; n0 < p.N;
       n0 += static_cast<int64_t>(gridDim.y) * kTcBN) {
    FragAcc acc[NF2];
    LRK_UNROLL
    for (int j = 0; j < NF2; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t r0 = 0; r0 < r_pad; r0 += kTcRK) {
      load_tile<kTcRK, kTcBN, false>(cs, LDC, c, p.stride_cr, p.stride_cn, r0, n0, p.R, p.N);
      __syncthreads();
      LRK_UNROLL
      for (int kk = 0; kk < kTcRK; kk += 16) {
        if (r0 + kk < r_pad) {  // block-uniform; Z's padded columns are exact zeros (stage 1)
          FragB fb;
          wmma::load_matrix_sync(fb, cs + kk * LDC + 16 * fn, LDC);
          LRK_UNROLL
          for (int j = 0; j < NF2; ++j) {
            const int fm = warp / 4 + 2 * j;
            FragA fa;
            wmma::load_matrix_sync(fa, zs + 16 * fm * zld + r0 + kk, static_cast<unsigned>(zld));
            wmma::mma_sync(acc[j], fa, fb, acc[j]);
          }
        }
      }
      __syncthreads();
    }
    LRK_UNROLL
    for (int j = 0; j < NF2; ++j) {
      const int fm = warp / 4 + 2 * j;
      wmma::store_matrix_sync(scratch, acc[j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t grow = row0 + 16 * fm + e / 16;
        const int64_t gcol = n0 + 16 * fn + e % 16;
        if (grow < p.M && gcol < p.N) {
          float v = scratch[e];
          if (bias != nullptr) v += Num<T>::to_float(bias[gcol * p.stride_bias]);
          out[grow * p.N + gcol] = Num<T>::from_float(v);
        }
      }
      __syncwarp();
    }
  }
}

template <typename T, int BLOCK_M>
__global__ void __launch_bounds__(kThreads, min_blocks_per_sm(BLOCK_M)) chain_tc_kernel(const ChainArgs p, const int64_t r_pad) {
  if constexpr (tc_compiled_for_this_arch<T>()) {
    chain_tc_body<T, BLOCK_M>(p, r_pad);
  } else {
    __trap();
  }
}

// ---- fp32 SIMT kernel ----

template <int TM>
__global__ void __launch_bounds__(kThreads, min_blocks_per_sm(16 * TM)) chain_f32_kernel(const ChainArgs p, const int64_t r_pad) {
  constexpr int BLOCK_M = 16 * TM;
  constexpr int LDA = BLOCK_M + kF32Pad;  // A tile is stored transposed: [kF32BK][LDA]
  constexpr int LDB = kF32CW + kF32Pad;

  LRK_DYNAMIC_SMEM(smem);
  const int64_t zld = r_pad + 1;  // odd: the two rows a warp reads sit in different banks
  float* zs = reinterpret_cast<float*>(smem);
  float* as = reinterpret_cast<float*>(smem + f32_zs_bytes(BLOCK_M, r_pad));
  float* bs = as + kF32BK * LDA;
  float* cs = as;  // stage 2 reuses the stage-1 tiles

  const float* a = static_cast<const float*>(p.a);
  const float* b = static_cast<const float*>(p.b);
  const float* c = static_cast<const float*>(p.c);
  const float* bias = static_cast<const float*>(p.bias);
  float* out = static_cast<float*>(p.out);
  float* zg = static_cast<float*>(p.z);
  const int tx = static_cast<int>(threadIdx.x) % 16;
  const int ty = static_cast<int>(threadIdx.x) / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BLOCK_M;
  const bool write_z = zg != nullptr && blockIdx.y == 0;

  // Stage 1: thread (ty, tx) owns Z rows ty + 16i and columns chunk0 + tx + 16j.
  for (int64_t chunk0 = 0; chunk0 < r_pad; chunk0 += kF32CW) {
    float acc[TM][4] = {};
    for (int64_t k0 = 0; k0 < p.K; k0 += kF32BK) {
      load_tile<BLOCK_M, kF32BK, true>(as, LDA, a, p.stride_am, p.stride_ak, row0, k0, p.M, p.K);
      load_tile<kF32BK, kF32CW, false>(bs, LDB, b, p.stride_bk, p.stride_br, k0, chunk0, p.K,
                                       p.R);
      __syncthreads();
      LRK_UNROLL
      for (int kk = 0; kk < kF32BK; ++kk) {
        float av[TM];
        float bv[4];
        LRK_UNROLL
        for (int i = 0; i < TM; ++i) av[i] = as[kk * LDA + ty + 16 * i];
        LRK_UNROLL
        for (int j = 0; j < 4; ++j) bv[j] = bs[kk * LDB + tx + 16 * j];
        LRK_UNROLL
        for (int i = 0; i < TM; ++i) {
          LRK_UNROLL
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
      }
      __syncthreads();
    }
    LRK_UNROLL
    for (int i = 0; i < TM; ++i) {
      LRK_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int64_t col = chunk0 + tx + 16 * j;
        if (col < r_pad) {
          // Padded rank lanes stay exact zeros even when x holds an inf (see the tc kernel).
          zs[(ty + 16 * i) * zld + col] = col < p.R ? acc[i][j] : 0.0f;
          const int64_t grow = row0 + ty + 16 * i;
          if (write_z && grow < p.M && col < p.R) zg[grow * p.R + col] = acc[i][j];
        }
      }
    }
  }
  __syncthreads();

  // Stage 2: thread (ty, tx) owns output rows ty + 16i and columns n0 + tx + 16j.
  for (int64_t n0 = static_cast<int64_t>(blockIdx.y) * kF32CW; n0 < p.N;
       n0 += static_cast<int64_t>(gridDim.y) * kF32CW) {
    float acc[TM][4] = {};
    for (int64_t r0 = 0; r0 < r_pad; r0 += kF32RK) {
      load_tile<kF32RK, kF32CW, false>(cs, LDB, c, p.stride_cr, p.stride_cn, r0, n0, p.R, p.N);
      __syncthreads();
      LRK_UNROLL
      for (int kk = 0; kk < kF32RK; ++kk) {
        float av[TM];
        float bv[4];
        LRK_UNROLL
        for (int i = 0; i < TM; ++i) av[i] = zs[(ty + 16 * i) * zld + r0 + kk];
        LRK_UNROLL
        for (int j = 0; j < 4; ++j) bv[j] = cs[kk * LDB + tx + 16 * j];
        LRK_UNROLL
        for (int i = 0; i < TM; ++i) {
          LRK_UNROLL
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
      }
      __syncthreads();
    }
    LRK_UNROLL
    for (int i = 0; i < TM; ++i) {
      const int64_t grow = row0 + ty + 16 * i;
      LRK_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int64_t gcol = n0 + tx + 16 * j;
        if (grow < p.M && gcol < p.N) {
          float v = acc[i][j];
          if (bias != nullptr) v += bias[gcol * p.stride_bias];
          out[grow * p.N + gcol] = v;
        }
      }
    }
  }
}

// ---- host side ----

using KernelFn = void (*)(const ChainArgs, const int64_t);

KernelFn tc_kernel_for(ChainDType dtype, int block_m) {
  const bool bf16 = dtype == ChainDType::kBFloat16;
  switch (block_m) {
    case 32:
      return bf16 ? chain_tc_kernel<__nv_bfloat16, 32> : chain_tc_kernel<__half, 32>;
    case 64:
      return bf16 ? chain_tc_kernel<__nv_bfloat16, 64> : chain_tc_kernel<__half, 64>;
    default:
      return bf16 ? chain_tc_kernel<__nv_bfloat16, 128> : chain_tc_kernel<__half, 128>;
  }
}

KernelFn f32_kernel_for(int block_m) {
  switch (block_m) {
    case 16:
      return chain_f32_kernel<1>;
    case 32:
      return chain_f32_kernel<2>;
    default:
      return chain_f32_kernel<4>;
  }
}

}  // namespace

ChainPlan plan_chain(int64_t M, int64_t N, int64_t R, ChainDType dtype,
                     const ChainDeviceInfo& device) {
  ChainPlan plan;
  plan.r_pad = (R + 15) / 16 * 16;
  if (M <= 0 || R <= 0) return plan;
  const bool fp32 = dtype == ChainDType::kFloat32;
  if (!fp32) {
    const int min_major = dtype == ChainDType::kBFloat16 ? 8 : 7;
    if (device.cc_major < min_major) return plan;  // no WMMA for this dtype: two-GEMM fallback
  }
  // Preferred rows per block: many rows amortize the C tiles, but Z (BLOCK_M x r_pad) must
  // fit in shared memory and small batches should not waste rows.
  int block_m;
  int min_block_m;
  if (fp32) {
    block_m = plan.r_pad <= 256 ? 64 : 32;
    min_block_m = 16;
  } else {
    block_m = plan.r_pad <= 128 ? 128 : 64;
    min_block_m = 32;
  }
  while (block_m > min_block_m && M <= block_m / 2) block_m /= 2;
  auto smem_for = [&](int bm) {
    return fp32 ? f32_smem_bytes(bm, plan.r_pad) : tc_smem_bytes(bm, plan.r_pad);
  };
  while (block_m > min_block_m && smem_for(block_m) > device.max_smem_optin) block_m /= 2;
  if (smem_for(block_m) > device.max_smem_optin) return plan;  // rank too large for on-chip Z

  const int64_t row_blocks = (M + block_m - 1) / block_m;
  if (row_blocks > INT_MAX) return plan;
  const int tile_n = fp32 ? kF32CW : kTcBN;
  const int64_t col_tiles = std::max<int64_t>(1, (N + tile_n - 1) / tile_n);
  const int64_t target_blocks = 2 * static_cast<int64_t>(std::max(device.num_sms, 1));
  int64_t split = 1;
  if (row_blocks < target_blocks) {
    split = std::max<int64_t>(1, std::min({col_tiles, target_blocks / row_blocks, int64_t{8}}));
  }

  plan.fused = true;
  plan.tensor_cores = !fp32;
  plan.block_m = block_m;
  plan.split = static_cast<int>(split);
  plan.smem_bytes = smem_for(block_m);
  return plan;
}

ChainDeviceInfo query_current_device() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  ChainDeviceInfo info;
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrComputeCapabilityMajor, device));
  info.cc_major = value;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrComputeCapabilityMinor, device));
  info.cc_minor = value;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device));
  info.num_sms = value;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  info.max_smem_optin = static_cast<size_t>(value);
  return info;
}

bool launch_chain(const ChainArgs& args, ChainDType dtype, const ChainPlan& plan,
                  cudaStream_t stream) {
  if (!plan.fused) return false;
  const KernelFn kernel = plan.tensor_cores ? tc_kernel_for(dtype, plan.block_m)
                                            : f32_kernel_for(plan.block_m);
  if (plan.smem_bytes > kDefaultSmem) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(plan.smem_bytes)));
  }
  const dim3 grid(static_cast<unsigned>((args.M + plan.block_m - 1) / plan.block_m),
                  static_cast<unsigned>(plan.split));
  LRK_LAUNCH(kernel, grid, dim3(kThreads), plan.smem_bytes, stream, args, plan.r_pad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace lowrank_kernels
