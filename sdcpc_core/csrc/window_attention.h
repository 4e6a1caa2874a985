// Raw-pointer launchers of the window-attention kernels (no torch headers: the .cu compiles fast).
// Layouts are channels-last and contiguous:
//   q (B, N, C), k / v (B, T, N, C), N = H * W; query_index (B, M) int64 flat y * W + x, or nullptr
//   for all N queries (then M == N); out (B, M, C); lse (B, M) fp32 log-sum-exp of the scaled logits.
//   Gradients are fp32 buffers that the caller zeroes: grad_q (B, N, C), grad_k / grad_v (B, T, N, C).
// dtype: one of SdcpcDtype, for q, k, v, out and grad_out. Returns the launch error (cudaSuccess if ok).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

enum SdcpcDtype { kSdcpcFloat32 = 0, kSdcpcFloat16 = 1, kSdcpcBFloat16 = 2 };

constexpr int kSdcpcMaxWindow = 15;

cudaError_t sdcpc_window_attention_forward(
    int dtype, const void* q, const void* k, const void* v, const int64_t* query_index,
    void* out, float* lse,
    int64_t B, int64_t T, int64_t C, int64_t H, int64_t W, int64_t M, int window, int dilation,
    cudaStream_t stream);

cudaError_t sdcpc_window_attention_backward(
    int dtype, const void* grad_out, const void* q, const void* k, const void* v,
    const int64_t* query_index, const void* out, const float* lse,
    float* grad_q, float* grad_k, float* grad_v,
    int64_t B, int64_t T, int64_t C, int64_t H, int64_t W, int64_t M, int window, int dilation,
    cudaStream_t stream);
