// CUDA implementations of the pagcp ops, registered under the CUDA dispatch key (the schemas are defined
// in Python, pagcp/ops/library.py). Compiled only when setup.py finds a CUDA toolkit and a CUDA build of
// torch.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <vector>

#include "pagcp_common.h"

namespace pagcp {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load_f(const void* p, int64_t i, int dtype) {
  if (dtype == 0) return static_cast<const float*>(p)[i];
  if (dtype == 1) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ float block_sum(float v, float* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shared[lane] : 0.0f;
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  __syncthreads();
  return v;
}

// Per-layer table (int64, device): [w_ptr, dtype, cout, cpg, kk, groups, keep_offset, filter_start]
constexpr int kLayerFields = 8;

__global__ void filter_saliency_kernel(const int64_t* __restrict__ layers, int64_t n_layers,
                                       const float* __restrict__ keep, float* __restrict__ out, int p,
                                       bool mean) {
  __shared__ float shared[32];
  const int64_t f = blockIdx.x;
  int64_t lo = 0, hi = n_layers - 1;  // last layer whose filter_start <= f
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (layers[mid * kLayerFields + 7] <= f) lo = mid; else hi = mid - 1;
  }
  const int64_t* L = layers + lo * kLayerFields;
  const void* w = reinterpret_cast<const void*>(L[0]);
  const int dtype = static_cast<int>(L[1]);
  const int64_t cout = L[2], cpg = L[3], kk = L[4], groups = L[5];
  const int64_t o = f - L[7];
  const float* kp = keep + L[6] + (o / (cout / groups)) * cpg;
  const int64_t base = o * cpg * kk, len = cpg * kk;
  float acc = 0.0f, alive = 0.0f;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    if (kp[i / kk] == 0.0f) continue;
    const float v = load_f(w, base + i, dtype);
    acc += p == 1 ? fabsf(v) : v * v;
    alive += 1.0f;
  }
  acc = block_sum(acc, shared);
  alive = block_sum(alive, shared);  // alive input elements = alive channels * kk
  if (threadIdx.x == 0) {
    if (mean) out[f] = alive == 0.0f ? 0.0f : acc / alive;
    else out[f] = p == 2 ? sqrtf(acc) : acc;
  }
}

template <typename T>
__device__ __forceinline__ float act_f(T v, float s, float b, Act act) {
  float y = static_cast<float>(v) * s + b;
  if (act == Act::Silu) return y / (1.0f + __expf(-y));
  if (act == Act::Relu) return y > 0.0f ? y : 0.0f;
  return y;
}

// One thread per input element; with expand it writes the R candidate outputs of that element.
// Works for NCHW and channels_last alike: output offset = r * (N*C*HW) + input offset.
template <typename T>
__global__ void masked_bn_act_kernel(const T* __restrict__ x, const float* __restrict__ scale,
                                     const float* __restrict__ shift, const float* __restrict__ keep,
                                     T* __restrict__ out, int64_t R, int64_t N, int64_t C, int64_t HW,
                                     bool channels_last, Act act, bool expand) {
  const int64_t per_r = N * C * HW;
  const int64_t total = expand ? per_r : R * per_r;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channels_last ? i % C : (i / HW) % C;
    if (expand) {
      const float y = act_f(x[i], scale[c], shift[c], act);
      for (int64_t r = 0; r < R; ++r) out[r * per_r + i] = static_cast<T>(y * keep[r * C + c]);
    } else {
      const float k = keep[(i / per_r) * C + c];
      out[i] = static_cast<T>(k == 0.0f ? 0.0f : act_f(x[i], scale[c], shift[c], act) * k);
    }
  }
}

// Partial per-channel sums over a chunk of rows (row = n*HW + hw): partial[chunk, c] for |x| and x^2.
template <typename T>
__global__ void stats_kernel(const T* __restrict__ x, float* __restrict__ part_abs, float* __restrict__ part_sq,
                             int64_t rows, int64_t C, int64_t HW, int64_t sN, int64_t sC, int64_t sHW,
                             int64_t rows_per_chunk) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float a = 0.0f, q = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float v = static_cast<float>(x[(r / HW) * sN + c * sC + (r % HW) * sHW]);
    a += fabsf(v);
    q += v * v;
  }
  part_abs[blockIdx.y * C + c] = a;
  part_sq[blockIdx.y * C + c] = q;
}

int dtype_code(const at::Tensor& w) {
  if (w.scalar_type() == at::kFloat) return 0;
  if (w.scalar_type() == at::kHalf) return 1;
  return 2;
}

at::Tensor filter_saliency_cuda(at::TensorList weights, const at::Tensor& keep, at::IntArrayRef keep_offsets,
                                at::IntArrayRef groups, int64_t p, bool mean) {
  SaliencyPlan plan = make_saliency_plan(weights, keep, keep_offsets, groups, p);
  const c10::cuda::CUDAGuard guard(keep.device());
  std::vector<at::Tensor> ws;
  std::vector<int64_t> table;
  for (size_t l = 0; l < weights.size(); ++l) {
    ws.push_back(weights[l].contiguous());
    table.insert(table.end(), {reinterpret_cast<int64_t>(ws.back().const_data_ptr()), dtype_code(ws.back()),
                               plan.cout[l], plan.cpg[l], plan.kk[l], plan.groups[l], keep_offsets[l],
                               plan.filter_start[l]});
  }
  at::Tensor layers = at::tensor(table, at::kLong).to(keep.device(), /*non_blocking=*/false);
  at::Tensor keep_f = keep.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({plan.total_filters}, keep.options().dtype(at::kFloat));
  if (plan.total_filters == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  filter_saliency_kernel<<<static_cast<unsigned>(plan.total_filters), kThreads, 0, stream>>>(
      layers.const_data_ptr<int64_t>(), static_cast<int64_t>(ws.size()), keep_f.const_data_ptr<float>(),
      out.data_ptr<float>(), static_cast<int>(p), mean);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void masked_bn_act_out_cuda(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                            const at::Tensor& keep, c10::string_view act_name, bool expand, const at::Tensor& out) {
  const Act act = parse_act(act_name);
  BnActShape shp = check_bn_act(x_in, scale, shift, keep, expand, out);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const bool channels_last = is_channels_last(x_in) && !x_in.is_contiguous();
  at::Tensor x = channels_last ? x_in : x_in.contiguous();
  const bool out_matches = channels_last ? is_channels_last(out) : out.is_contiguous();
  at::Tensor dst = out_matches ? out : at::empty_like(out, out.options(), layout_of(channels_last));
  at::Tensor s = scale.to(at::kFloat).contiguous(), b = shift.to(at::kFloat).contiguous();
  at::Tensor k = keep.to(at::kFloat).contiguous();
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t work = expand ? x.numel() : dst.numel();
  if (work > 0) {
    const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, 65535LL * 8);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_bn_act_cuda", [&] {
      masked_bn_act_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), s.const_data_ptr<float>(), b.const_data_ptr<float>(),
          k.const_data_ptr<float>(), dst.mutable_data_ptr<scalar_t>(), shp.R, shp.N, C, HW, channels_last, act,
          expand);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!out_matches) out.copy_(dst);
}

at::Tensor masked_bn_act_cuda(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                              const at::Tensor& keep, c10::string_view act, bool expand) {
  at::Tensor out = empty_bn_act_out(x, keep, expand);
  masked_bn_act_out_cuda(x, scale, shift, keep, act, expand, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> channel_activation_stats_cuda(const at::Tensor& x) {
  check_stats_input(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), W = x.size(3), HW = x.size(2) * W;
  at::Tensor xs = x;
  if (x.stride(2) != W * x.stride(3)) xs = x.contiguous();  // (h, w) must merge into one index
  const int64_t rows = N * HW;
  const int64_t rows_per_chunk = 256;
  const int64_t chunks = std::max<int64_t>(1, (rows + rows_per_chunk - 1) / rows_per_chunk);
  auto opts = x.options().dtype(at::kFloat);
  at::Tensor pa = at::zeros({chunks, C}, opts), pq = at::zeros({chunks, C}, opts);
  if (rows > 0 && C > 0) {
    const dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>(chunks));
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs.scalar_type(), "channel_activation_stats_cuda", [&] {
      stats_kernel<scalar_t><<<grid, 32, 0, stream>>>(xs.const_data_ptr<scalar_t>(), pa.data_ptr<float>(),
                                                      pq.data_ptr<float>(), rows, C, HW, xs.stride(0),
                                                      xs.stride(1), xs.stride(3), rows_per_chunk);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const double denom = static_cast<double>(std::max<int64_t>(1, rows));
  return {pa.sum(0).div_(denom), pq.sum(0).div_(denom)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pagcp, CUDA, m) {
  m.impl("filter_saliency", &filter_saliency_cuda);
  m.impl("masked_bn_act", &masked_bn_act_cuda);
  m.impl("masked_bn_act_out", &masked_bn_act_out_cuda);
  m.impl("channel_activation_stats", &channel_activation_stats_cuda);
}

}  // namespace pagcp
