// Torch binding of the window-attention kernels: argument checks, channels-last copies, the current
// stream, fp32 gradient buffers, pybind. The kernels themselves are in window_attention_kernel.cu.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "window_attention.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kSdcpcFloat32;
    case at::kHalf: return kSdcpcFloat16;
    case at::kBFloat16: return kSdcpcBFloat16;
    default: TORCH_CHECK(false, "window_attention (CUDA): dtype must be float32, float16 or bfloat16, got ",
                         t.scalar_type());
  }
  return -1;
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& query_index, int64_t window, int64_t dilation) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "window_attention (CUDA): q, k, v must be CUDA tensors");
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "window_attention (CUDA): q, k, v on different devices");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 5 && v.sizes() == k.sizes(),
              "window_attention (CUDA): expected q (B, C, H, W) and k, v (B, T, C, H, W)");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(2) == q.size(1) && k.size(3) == q.size(2) && k.size(4) == q.size(3),
              "window_attention (CUDA): k/v shape ", k.sizes(), " does not match q shape ", q.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "window_attention (CUDA): q, k, v must have one dtype");
  TORCH_CHECK(window >= 1 && window % 2 == 1 && window <= kSdcpcMaxWindow,
              "window_attention (CUDA): window must be odd and <= ", kSdcpcMaxWindow, ", got ", window);
  TORCH_CHECK(dilation >= 1, "window_attention (CUDA): dilation must be >= 1, got ", dilation);
  if (query_index) {
    const auto& qi = *query_index;
    TORCH_CHECK(qi.is_cuda() && qi.device() == q.device(), "window_attention (CUDA): query_index on another device");
    TORCH_CHECK(qi.scalar_type() == at::kLong && qi.dim() == 2 && qi.size(0) == q.size(0) && qi.is_contiguous(),
                "window_attention (CUDA): query_index must be a contiguous int64 (B, M) tensor");
    // The kernels index q and atomicAdd into grad_q with these values: never trust the caller.
    const int64_t n = q.size(2) * q.size(3);
    if (qi.numel() > 0) {
      const auto bounds = at::aminmax(qi);  // one reduction, one device-to-host copy
      const int64_t lo = std::get<0>(bounds).item<int64_t>(), hi = std::get<1>(bounds).item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < n, "window_attention (CUDA): query_index values must be in [0, H*W=", n,
                  "), got [", lo, ", ", hi, "]");
    }
  }
}

const int64_t* index_ptr(const std::optional<at::Tensor>& query_index) {
  return query_index ? query_index->data_ptr<int64_t>() : nullptr;
}

// (B, C, H, W) -> (B, H*W, C) and (B, T, C, H, W) -> (B, T, H*W, C), contiguous (no copy if already so)
at::Tensor rows_q(const at::Tensor& q) { return q.permute({0, 2, 3, 1}).contiguous(); }
at::Tensor rows_kv(const at::Tensor& k) { return k.permute({0, 1, 3, 4, 2}).contiguous(); }

// Permute back and cast in one copy into a new contiguous tensor.
at::Tensor cast_contiguous(const at::Tensor& t, at::ScalarType dtype) {
  return at::empty(t.sizes(), t.options().dtype(dtype)).copy_(t);
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::optional<at::Tensor>& query_index, int64_t window, int64_t dilation) {
  check_inputs(q, k, v, query_index, window, dilation);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2), H = k.size(3), W = k.size(4);
  const int64_t M = query_index ? query_index->size(1) : H * W;
  const auto qr = rows_q(q), kr = rows_kv(k), vr = rows_kv(v);
  auto out = at::empty({B, M, C}, q.options());
  auto lse = at::empty({B, M}, q.options().dtype(at::kFloat));
  const cudaError_t err = sdcpc_window_attention_forward(
      dtype_code(q), qr.data_ptr(), kr.data_ptr(), vr.data_ptr(), index_ptr(query_index), out.data_ptr(),
      lse.data_ptr<float>(), B, T, C, H, W, M, (int)window, (int)dilation, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "window_attention (CUDA) forward: ", cudaGetErrorString(err),
              err == cudaErrorInvalidValue ? " (C too large for shared memory?)" : "");
  return {out.transpose(1, 2).contiguous(), lse};  // (B, C, M), (B, M)
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const std::optional<at::Tensor>& query_index,
                                 const at::Tensor& out, const at::Tensor& lse, int64_t window, int64_t dilation) {
  check_inputs(q, k, v, query_index, window, dilation);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2), H = k.size(3), W = k.size(4);
  const int64_t M = query_index ? query_index->size(1) : H * W;
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.dim() == 3 && out.size(1) == C && out.size(2) == M,
              "window_attention (CUDA) backward: grad_out/out must be (B, C, M)");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.numel() == B * M,
              "window_attention (CUDA) backward: lse must be contiguous fp32 (B, M)");
  const auto qr = rows_q(q), kr = rows_kv(k), vr = rows_kv(v);
  const auto g = grad_out.to(q.scalar_type()).transpose(1, 2).contiguous();  // B, M, C
  const auto o = out.transpose(1, 2).contiguous();
  const auto f32 = q.options().dtype(at::kFloat);
  auto gq = at::zeros({B, H * W, C}, f32);
  auto gk = at::zeros({B, T, H * W, C}, f32);
  auto gv = at::zeros({B, T, H * W, C}, f32);
  const cudaError_t err = sdcpc_window_attention_backward(
      dtype_code(q), g.data_ptr(), qr.data_ptr(), kr.data_ptr(), vr.data_ptr(), index_ptr(query_index),
      o.data_ptr(), lse.data_ptr<float>(), gq.data_ptr<float>(), gk.data_ptr<float>(), gv.data_ptr<float>(), B, T,
      C, H, W, M, (int)window, (int)dilation, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "window_attention (CUDA) backward: ", cudaGetErrorString(err));
  return {cast_contiguous(gq.view({B, H, W, C}).permute({0, 3, 1, 2}), q.scalar_type()),
          cast_contiguous(gk.view({B, T, H, W, C}).permute({0, 1, 4, 2, 3}), k.scalar_type()),
          cast_contiguous(gv.view({B, T, H, W, C}).permute({0, 1, 4, 2, 3}), v.scalar_type())};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused window-based cross-frame attention (SD-CPC), forward and backward";
  m.def("forward", &forward, "window attention forward -> (out (B, C, M), lse (B, M))", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("query_index"), py::arg("window"), py::arg("dilation"));
  m.def("backward", &backward, "window attention backward -> (grad_q, grad_k, grad_v)", py::arg("grad_out"),
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("query_index"), py::arg("out"), py::arg("lse"),
        py::arg("window"), py::arg("dilation"));
}
