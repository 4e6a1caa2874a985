// Window-based cross-frame attention, fused CUDA kernels (SD-CPC §5).
//
// One warp per query; lanes stride over channels (channels-last rows, so a warp's loads of one key
// are coalesced). Per-lane channel state (the scaled query, accumulators) lives in dynamic shared
// memory, C floats per array per warp, so any C works; lane l only touches channels c = l (mod 32),
// which is also bank-conflict free.
//
// Forward: for each of the T * w * w keys inside the frame, logit = warp-sum(q * k) / sqrt(C), then an
// online softmax (running max and sum, accumulator rescaled) aggregates v. The logits and weights
// never leave registers; the kernel writes only the output and the per-query log-sum-exp (B * M fp32).
//
// Backward recomputes the logits instead of storing them: p = exp(q.k / sqrt(C) - lse) needs only the
// saved lse, and with D = sum_c grad_out * out (one dot per query) the softmax gradient is
// ds = p * (grad_out . v - D). Storing the T * w * w weights per query would cost T * w * w times more
// memory than lse and a global write of all of them in forward (what the fusion avoids); the
// recomputation costs one extra C-length dot per key, on k rows that backward reads anyway for grad_q.
// grad_k / grad_v (and grad_q, since query_index may repeat a position) are accumulated with fp32
// atomicAdd into zeroed buffers, so the backward is not bitwise deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "window_attention.h"

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kDefaultSmem = 48 * 1024;

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float s) {
  for (int o = kWarp / 2; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                               const scalar_t* __restrict__ v, const int64_t* __restrict__ query_index,
                               scalar_t* __restrict__ out, float* __restrict__ lse,
                               int64_t B, int T, int C, int H, int W, int64_t M, int window, int dilation,
                               float scale) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / kWarp) + warp;  // b * M + m
  if (row >= B * M) return;  // warp-uniform
  float* qs = smem + (int64_t)warp * 2 * C;  // scaled query (C)
  float* acc = qs + C;                       // unnormalised output (C)
  const int64_t b = row / M, N = (int64_t)H * W;
  const int64_t n = query_index ? query_index[row] : row % M;
  const int y = (int)(n / W), x = (int)(n % W);

  for (int c = lane; c < C; c += kWarp) {
    qs[c] = load(q + (b * N + n) * C + c) * scale;
    acc[c] = 0.f;
  }
  float mx = -INFINITY, l = 0.f;
  const int r = window / 2;
  for (int t = 0; t < T; ++t) {
    const int64_t frame = (b * T + t) * N;
    for (int dy = -r; dy <= r; ++dy) {
      const int ny = y + dy * dilation;
      if (ny < 0 || ny >= H) continue;
      for (int dx = -r; dx <= r; ++dx) {
        const int nx = x + dx * dilation;
        if (nx < 0 || nx >= W) continue;  // keys outside the frame are excluded
        const int64_t key = (frame + (int64_t)ny * W + nx) * C;
        float s = 0.f;
        for (int c = lane; c < C; c += kWarp) s += qs[c] * load(k + key + c);
        s = warp_sum(s);
        const float mnew = fmaxf(mx, s);
        const float alpha = expf(mx - mnew), p = expf(s - mnew);
        l = l * alpha + p;
        for (int c = lane; c < C; c += kWarp) acc[c] = acc[c] * alpha + p * load(v + key + c);
        mx = mnew;
      }
    }
  }
  const float inv = 1.f / l;  // l >= 1: the centre key is always inside the frame
  for (int c = lane; c < C; c += kWarp) store(out + row * C + c, acc[c] * inv);
  if (lane == 0) lse[row] = mx + logf(l);
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ q,
                                const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                const int64_t* __restrict__ query_index, const scalar_t* __restrict__ out,
                                const float* __restrict__ lse, float* __restrict__ grad_q,
                                float* __restrict__ grad_k, float* __restrict__ grad_v,
                                int64_t B, int T, int C, int H, int W, int64_t M, int window, int dilation,
                                float scale) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / kWarp) + warp;
  if (row >= B * M) return;
  float* qs = smem + (int64_t)warp * 3 * C;  // scaled query
  float* gs = qs + C;                        // grad_out
  float* gq = gs + C;                        // sum_key ds * k
  const int64_t b = row / M, N = (int64_t)H * W;
  const int64_t n = query_index ? query_index[row] : row % M;
  const int y = (int)(n / W), x = (int)(n % W);

  float d = 0.f;
  for (int c = lane; c < C; c += kWarp) {
    qs[c] = load(q + (b * N + n) * C + c) * scale;
    gs[c] = load(grad_out + row * C + c);
    gq[c] = 0.f;
    d += gs[c] * load(out + row * C + c);
  }
  d = warp_sum(d);  // D = grad_out . out = sum_keys p * (grad_out . v)
  const float lse_row = lse[row];
  const int r = window / 2;
  for (int t = 0; t < T; ++t) {
    const int64_t frame = (b * T + t) * N;
    for (int dy = -r; dy <= r; ++dy) {
      const int ny = y + dy * dilation;
      if (ny < 0 || ny >= H) continue;
      for (int dx = -r; dx <= r; ++dx) {
        const int nx = x + dx * dilation;
        if (nx < 0 || nx >= W) continue;
        const int64_t key = (frame + (int64_t)ny * W + nx) * C;
        float s = 0.f, dp = 0.f;
        for (int c = lane; c < C; c += kWarp) {
          s += qs[c] * load(k + key + c);
          dp += gs[c] * load(v + key + c);
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        const float p = expf(s - lse_row);
        const float ds = p * (dp - d);  // d loss / d logit
        for (int c = lane; c < C; c += kWarp) {
          gq[c] += ds * load(k + key + c);
          atomicAdd(grad_k + key + c, ds * qs[c]);  // d logit / d k = q / sqrt(C)
          atomicAdd(grad_v + key + c, p * gs[c]);
        }
      }
    }
  }
  for (int c = lane; c < C; c += kWarp) atomicAdd(grad_q + (b * N + n) * C + c, gq[c] * scale);
}

// Warps per block and dynamic shared memory for `floats_per_warp` floats per warp; opts the kernel
// into more than 48 KiB when a single warp needs it.
template <typename Kernel>
cudaError_t launch_config(Kernel kernel, int64_t floats_per_warp, int* warps, size_t* smem) {
  const size_t per_warp = (size_t)floats_per_warp * sizeof(float);
  int w = kWarpsPerBlock;
  while (w > 1 && w * per_warp > kDefaultSmem) w /= 2;
  *warps = w;
  *smem = w * per_warp;
  if (*smem <= kDefaultSmem) return cudaSuccess;
  int dev = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  if (*smem > (size_t)optin) return cudaErrorInvalidValue;  // C too large for one warp's state
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*smem);
}

template <typename scalar_t>
cudaError_t forward_typed(const void* q, const void* k, const void* v, const int64_t* qi, void* out,
                          float* lse, int64_t B, int64_t T, int64_t C, int64_t H, int64_t W, int64_t M,
                          int window, int dilation, cudaStream_t stream) {
  int warps;
  size_t smem;
  cudaError_t err = launch_config(forward_kernel<scalar_t>, 2 * C, &warps, &smem);
  if (err != cudaSuccess) return err;
  const int64_t blocks = (B * M + warps - 1) / warps;
  forward_kernel<scalar_t><<<(unsigned)blocks, warps * kWarp, smem, stream>>>(
      static_cast<const scalar_t*>(q), static_cast<const scalar_t*>(k), static_cast<const scalar_t*>(v),
      qi, static_cast<scalar_t*>(out), lse, B, (int)T, (int)C, (int)H, (int)W, M, window, dilation,
      1.f / sqrtf((float)C));
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t backward_typed(const void* g, const void* q, const void* k, const void* v, const int64_t* qi,
                           const void* out, const float* lse, float* gq, float* gk, float* gv, int64_t B,
                           int64_t T, int64_t C, int64_t H, int64_t W, int64_t M, int window, int dilation,
                           cudaStream_t stream) {
  int warps;
  size_t smem;
  cudaError_t err = launch_config(backward_kernel<scalar_t>, 3 * C, &warps, &smem);
  if (err != cudaSuccess) return err;
  const int64_t blocks = (B * M + warps - 1) / warps;
  backward_kernel<scalar_t><<<(unsigned)blocks, warps * kWarp, smem, stream>>>(
      static_cast<const scalar_t*>(g), static_cast<const scalar_t*>(q), static_cast<const scalar_t*>(k),
      static_cast<const scalar_t*>(v), qi, static_cast<const scalar_t*>(out), lse, gq, gk, gv, B, (int)T,
      (int)C, (int)H, (int)W, M, window, dilation, 1.f / sqrtf((float)C));
  return cudaGetLastError();
}

}  // namespace

cudaError_t sdcpc_window_attention_forward(int dtype, const void* q, const void* k, const void* v,
                                           const int64_t* query_index, void* out, float* lse, int64_t B,
                                           int64_t T, int64_t C, int64_t H, int64_t W, int64_t M,
                                           int window, int dilation, cudaStream_t stream) {
  if (B * M == 0) return cudaSuccess;
  if (window < 1 || window % 2 == 0 || window > kSdcpcMaxWindow || dilation < 1 || C < 1 || T < 1)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case kSdcpcFloat32:
      return forward_typed<float>(q, k, v, query_index, out, lse, B, T, C, H, W, M, window, dilation, stream);
    case kSdcpcFloat16:
      return forward_typed<__half>(q, k, v, query_index, out, lse, B, T, C, H, W, M, window, dilation, stream);
    case kSdcpcBFloat16:
      return forward_typed<__nv_bfloat16>(q, k, v, query_index, out, lse, B, T, C, H, W, M, window, dilation,
                                          stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t sdcpc_window_attention_backward(int dtype, const void* grad_out, const void* q, const void* k,
                                            const void* v, const int64_t* query_index, const void* out,
                                            const float* lse, float* grad_q, float* grad_k, float* grad_v,
                                            int64_t B, int64_t T, int64_t C, int64_t H, int64_t W, int64_t M,
                                            int window, int dilation, cudaStream_t stream) {
  if (B * M == 0) return cudaSuccess;
  if (window < 1 || window % 2 == 0 || window > kSdcpcMaxWindow || dilation < 1 || C < 1 || T < 1)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case kSdcpcFloat32:
      return backward_typed<float>(grad_out, q, k, v, query_index, out, lse, grad_q, grad_k, grad_v, B, T, C, H,
                                   W, M, window, dilation, stream);
    case kSdcpcFloat16:
      return backward_typed<__half>(grad_out, q, k, v, query_index, out, lse, grad_q, grad_k, grad_v, B, T, C,
                                    H, W, M, window, dilation, stream);
    case kSdcpcBFloat16:
      return backward_typed<__nv_bfloat16>(grad_out, q, k, v, query_index, out, lse, grad_q, grad_k, grad_v, B,
                                           T, C, H, W, M, window, dilation, stream);
    default:
      return cudaErrorInvalidValue;
  }
}
