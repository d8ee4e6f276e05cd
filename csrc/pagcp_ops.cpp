// pagcp._C: op schemas (torch.library) and the CPU (OpenMP) implementations.
//
// Ops (namespace `pagcp`, see pagcp/ops for the Python wrappers and the reference semantics):
//   filter_saliency(Tensor[] weights, Tensor keep, int[] keep_offsets, int[] groups, int p, bool mean) -> Tensor
//   masked_bn_act(Tensor x, Tensor scale, Tensor shift, Tensor keep, int act, bool expand) -> Tensor
//   masked_bn_act_out(..., Tensor(a!) out) -> ()
//   channel_activation_stats(Tensor x) -> (Tensor, Tensor)
// The CUDA implementations live in pagcp_ops_cuda.cu and register under the CUDA dispatch key.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pagcp_common.h"
#include "pagcp_cpu_vec.h"

namespace pagcp {
namespace {

using namespace cpu;  // element loops from pagcp_cpu_vec.h

int num_threads() { return std::max(1, at::get_num_threads()); }

// ---------------------------------------------------------------------------------------------
// filter_saliency
// ---------------------------------------------------------------------------------------------

// Sum of |w| (P=1) or w^2 (P=2) over the alive input channels of one filter; cnt gets the number
// of alive input channels.
template <typename T, int P>
__attribute__((target_clones("avx2", "default"))) float filter_sum(const T* w, const float* keep,
                                                                   int64_t cpg, int64_t kk,
                                                                   int64_t* cnt) {
  float acc = 0.0f;
  int64_t alive = 0;
  if (kk == 1) {
#pragma omp simd reduction(+ : acc, alive)
    for (int64_t j = 0; j < cpg; ++j) {
      float v = to_f(w[j]);
      float t = P == 1 ? std::fabs(v) : v * v;
      bool on = keep[j] != 0.0f;
      acc += on ? t : 0.0f;
      alive += on ? 1 : 0;
    }
  } else {
    for (int64_t j = 0; j < cpg; ++j) {
      if (keep[j] == 0.0f) continue;
      ++alive;
      const T* wj = w + j * kk;
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t q = 0; q < kk; ++q) {
        float v = to_f(wj[q]);
        part += P == 1 ? std::fabs(v) : v * v;
      }
      acc += part;
    }
  }
  *cnt = alive;
  return acc;
}

template <typename T>
float filter_value(const T* w, const float* keep, int64_t cpg, int64_t kk, int64_t p, bool mean) {
  int64_t alive = 0;
  float acc = p == 1 ? filter_sum<T, 1>(w, keep, cpg, kk, &alive) : filter_sum<T, 2>(w, keep, cpg, kk, &alive);
  if (mean) return alive == 0 ? 0.0f : acc / static_cast<float>(alive * kk);
  return p == 2 ? std::sqrt(acc) : acc;
}

at::Tensor filter_saliency_cpu(at::TensorList weights, const at::Tensor& keep, at::IntArrayRef keep_offsets,
                               at::IntArrayRef groups, int64_t p, bool mean) {
  SaliencyPlan plan = make_saliency_plan(weights, keep, keep_offsets, groups, p);
  std::vector<at::Tensor> ws;
  ws.reserve(weights.size());
  for (const auto& w : weights) ws.push_back(w.contiguous());
  at::Tensor keep_f = keep.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({plan.total_filters}, weights[0].options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const float* k = keep_f.data_ptr<float>();
  const int64_t nl = static_cast<int64_t>(ws.size());
  std::vector<int64_t> layer_of(plan.total_filters);
  for (int64_t l = 0; l < nl; ++l)
    std::fill(layer_of.begin() + plan.filter_start[l], layer_of.begin() + plan.filter_start[l + 1], l);

#pragma omp parallel for schedule(dynamic, 8) num_threads(num_threads())
  for (int64_t f = 0; f < plan.total_filters; ++f) {
    const int64_t l = layer_of[f];
    const at::Tensor& w = ws[l];
    const int64_t o_idx = f - plan.filter_start[l];
    const int64_t cpg = plan.cpg[l], kk = plan.kk[l];
    const int64_t g = o_idx / (plan.cout[l] / plan.groups[l]);
    const float* kp = k + keep_offsets[l] + g * cpg;
    const int64_t base = o_idx * cpg * kk;
    switch (w.scalar_type()) {
      case at::kFloat: o[f] = filter_value(w.const_data_ptr<float>() + base, kp, cpg, kk, p, mean); break;
      case at::kHalf: o[f] = filter_value(w.const_data_ptr<at::Half>() + base, kp, cpg, kk, p, mean); break;
      default: o[f] = filter_value(w.const_data_ptr<at::BFloat16>() + base, kp, cpg, kk, p, mean); break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// masked_bn_act
// ---------------------------------------------------------------------------------------------

constexpr int64_t kRun = 1024;  // elements per act() run kept in a stack buffer

// NCHW: one (row, channel) plane of HW contiguous elements at a time.
template <typename T, int64_t ACT>
void bn_act_planes(const T* x, const float* s, const float* b, const float* keep, T* out, int64_t R,
                   int64_t N, int64_t C, int64_t HW, bool expand, bool stream) {
  const int64_t in_rows = expand ? N : R * N;
  const int64_t out_stride_r = N * C * HW;
#pragma omp parallel num_threads(num_threads())
  {
    float buf[kRun];
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < in_rows * C; ++plane) {
      const int64_t c = plane % C;
      const int64_t row = plane / C;
      const T* xp = x + plane * HW;
      bool any = false;  // pruned in every candidate: write zeros without computing
      if (expand) {
        for (int64_t r = 0; r < R; ++r) any |= keep[r * C + c] != 0.0f;
      } else {
        any = keep[(row / N) * C + c] != 0.0f;
      }
      for (int64_t start = 0; start < HW; start += kRun) {
        const int64_t len = std::min(kRun, HW - start);
        if (any) act_run_uniform<T, ACT>(xp + start, s[c], b[c], buf, len);
        if (expand) {
          for (int64_t r = 0; r < R; ++r)
            store_scaled(out + r * out_stride_r + plane * HW + start, buf, keep[r * C + c], len, stream);
        } else {
          store_scaled(out + plane * HW + start, buf, keep[(row / N) * C + c], len, stream);
        }
      }
    }
    store_fence();
  }
}

// channels_last: one pixel row of C contiguous channels at a time.
template <typename T, int64_t ACT>
void bn_act_pixels(const T* x, const float* s, const float* b, const float* keep, T* out, int64_t R,
                   int64_t N, int64_t C, int64_t HW, bool expand, bool stream) {
  const int64_t in_pixels = (expand ? N : R * N) * HW;
  const int64_t out_stride_r = N * C * HW;
#pragma omp parallel num_threads(num_threads())
  {
    std::vector<float> buf(C);
#pragma omp for schedule(static)
    for (int64_t px = 0; px < in_pixels; ++px) {
      const int64_t off = px * C;
      act_run_channels<T, ACT>(x + off, s, b, buf.data(), C);
      if (expand) {
        for (int64_t r = 0; r < R; ++r)
          store_channels(out + r * out_stride_r + off, buf.data(), keep + r * C, C, stream);
      } else {
        store_channels(out + off, buf.data(), keep + (px / (N * HW)) * C, C, stream);
      }
    }
    store_fence();
  }
}

template <typename T>
void bn_act_dispatch(const at::Tensor& x, const float* s, const float* b, const float* k, const at::Tensor& out,
                     int64_t act, int64_t R, int64_t N, bool expand, bool channels_last) {
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  const T* xp = x.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const bool stream = std::is_same_v<T, float> && out.nbytes() >= kStreamBytes;
  auto run = [&](auto act_tag) {
    constexpr int64_t A = decltype(act_tag)::value;
    if (channels_last) {
      bn_act_pixels<T, A>(xp, s, b, k, op, R, N, C, HW, expand, stream);
    } else {
      bn_act_planes<T, A>(xp, s, b, k, op, R, N, C, HW, expand, stream);
    }
  };
  if (act == kActSilu) run(std::integral_constant<int64_t, kActSilu>{});
  else if (act == kActRelu) run(std::integral_constant<int64_t, kActRelu>{});
  else run(std::integral_constant<int64_t, kActIdentity>{});
}

void masked_bn_act_out_cpu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                           const at::Tensor& keep, int64_t act, bool expand, const at::Tensor& out) {
  BnActShape shp = check_bn_act(x_in, scale, shift, keep, act, expand, out);
  const bool channels_last = is_channels_last(x_in) && !x_in.is_contiguous();
  at::Tensor x = channels_last ? x_in : x_in.contiguous();
  const bool out_matches = channels_last ? is_channels_last(out) : out.is_contiguous();
  at::Tensor dst = out_matches ? out : at::empty_like(out, out.options(), layout_of(channels_last));
  at::Tensor s = scale.to(at::kFloat).contiguous(), b = shift.to(at::kFloat).contiguous();
  at::Tensor k = keep.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_bn_act_cpu", [&] {
    bn_act_dispatch<scalar_t>(x, s.const_data_ptr<float>(), b.const_data_ptr<float>(), k.const_data_ptr<float>(),
                              dst, act, shp.R, shp.N, expand, channels_last);
  });
  if (!out_matches) out.copy_(dst);
}

at::Tensor masked_bn_act_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                             const at::Tensor& keep, int64_t act, bool expand) {
  at::Tensor out = empty_bn_act_out(x, keep, expand);
  masked_bn_act_out_cpu(x, scale, shift, keep, act, expand, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// channel_activation_stats
// ---------------------------------------------------------------------------------------------

template <typename T>
__attribute__((target_clones("avx2", "default"))) void abs_sq_run(const T* x, int64_t len, float* sa, float* sq) {
  float a = 0.0f, q = 0.0f;
#pragma omp simd reduction(+ : a, q)
  for (int64_t i = 0; i < len; ++i) {
    float v = to_f(x[i]);
    a += std::fabs(v);
    q += v * v;
  }
  *sa = a;
  *sq = q;
}

template <typename T>
__attribute__((target_clones("avx2", "default"))) void abs_sq_accumulate(const T* x, int64_t len, float* sa,
                                                                         float* sq) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    float v = to_f(x[i]);
    sa[i] += std::fabs(v);
    sq[i] += v * v;
  }
}

template <typename T>
void stats_kernel(const at::Tensor& x, bool channels_last, float* mean_abs, float* mean_sq) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const T* xp = x.const_data_ptr<T>();
  const double denom = static_cast<double>(std::max<int64_t>(1, N * HW));
  if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t c = 0; c < C; ++c) {
      double a = 0.0, q = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const T* plane = xp + (n * C + c) * HW;
        for (int64_t start = 0; start < HW; start += kRun) {
          float pa, pq;
          abs_sq_run(plane + start, std::min(kRun, HW - start), &pa, &pq);
          a += pa;
          q += pq;
        }
      }
      mean_abs[c] = static_cast<float>(a / denom);
      mean_sq[c] = static_cast<float>(q / denom);
    }
    return;
  }
  const int64_t pixels = N * HW;
  const int nt = num_threads();
  std::vector<double> acc(static_cast<size_t>(2 * C * nt), 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    std::vector<float> sa(C, 0.0f), sq(C, 0.0f);
    double* da = acc.data() + 2 * C * t;
    double* dq = da + C;
    int64_t since_flush = 0;
#pragma omp for schedule(static)
    for (int64_t px = 0; px < pixels; ++px) {
      abs_sq_accumulate(xp + px * C, C, sa.data(), sq.data());
      if (++since_flush == 256) {  // keep float partial sums short for accuracy
        for (int64_t c = 0; c < C; ++c) {
          da[c] += sa[c];
          dq[c] += sq[c];
          sa[c] = sq[c] = 0.0f;
        }
        since_flush = 0;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      da[c] += sa[c];
      dq[c] += sq[c];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double a = 0.0, q = 0.0;
    for (int t = 0; t < nt; ++t) {
      a += acc[2 * C * t + c];
      q += acc[2 * C * t + C + c];
    }
    mean_abs[c] = static_cast<float>(a / denom);
    mean_sq[c] = static_cast<float>(q / denom);
  }
}

std::tuple<at::Tensor, at::Tensor> channel_activation_stats_cpu(const at::Tensor& x_in) {
  check_stats_input(x_in);
  const bool channels_last = is_channels_last(x_in) && !x_in.is_contiguous();
  at::Tensor x = channels_last ? x_in : x_in.contiguous();
  auto opts = x.options().dtype(at::kFloat);
  at::Tensor mean_abs = at::empty({x.size(1)}, opts), mean_sq = at::empty({x.size(1)}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_activation_stats_cpu", [&] {
    stats_kernel<scalar_t>(x, channels_last, mean_abs.data_ptr<float>(), mean_sq.data_ptr<float>());
  });
  return {mean_abs, mean_sq};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Shared validation (also used by the CUDA implementations)
// ---------------------------------------------------------------------------------------------

SaliencyPlan make_saliency_plan(at::TensorList weights, const at::Tensor& keep, at::IntArrayRef keep_offsets,
                                at::IntArrayRef groups, int64_t p) {
  TORCH_CHECK(!weights.empty(), "pagcp::filter_saliency: weights is empty");
  TORCH_CHECK(p == 1 || p == 2, "pagcp::filter_saliency: p must be 1 or 2, got ", p);
  const size_t nl = weights.size();
  TORCH_CHECK(keep_offsets.size() == nl && groups.size() == nl,
              "pagcp::filter_saliency: keep_offsets and groups need one entry per weight");
  TORCH_CHECK(keep.dim() == 1, "pagcp::filter_saliency: keep must be 1-D (all layers' masks concatenated)");
  SaliencyPlan plan;
  plan.filter_start.push_back(0);
  for (size_t l = 0; l < nl; ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK(w.dim() >= 2, "pagcp::filter_saliency: weight ", l, " must have >= 2 dims, got ", w.dim());
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16,
                "pagcp::filter_saliency: weight ", l, " must be float32, float16 or bfloat16");
    TORCH_CHECK(w.device() == keep.device(), "pagcp::filter_saliency: weight ", l, " and keep on different devices");
    const int64_t cout = w.size(0), cpg = w.size(1);
    const int64_t kk = cout * cpg == 0 ? 1 : w.numel() / (cout * cpg);
    const int64_t g = groups[l];
    TORCH_CHECK(g >= 1 && cout % g == 0, "pagcp::filter_saliency: weight ", l, " has ", cout,
                " filters, not divisible by groups=", g);
    TORCH_CHECK(keep_offsets[l] >= 0 && keep_offsets[l] + g * cpg <= keep.numel(),
                "pagcp::filter_saliency: keep mask of weight ", l, " is out of range");
    plan.cout.push_back(cout);
    plan.cpg.push_back(cpg);
    plan.kk.push_back(kk);
    plan.groups.push_back(g);
    plan.filter_start.push_back(plan.filter_start.back() + cout);
  }
  plan.total_filters = plan.filter_start.back();
  return plan;
}

bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat layout_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

BnActShape check_bn_act(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& keep,
                        int64_t act, bool expand, const at::Tensor& out) {
  TORCH_CHECK(x.dim() == 4, "pagcp::masked_bn_act: x must be N x C x H x W, got ", x.dim(), " dims");
  TORCH_CHECK(act == kActIdentity || act == kActRelu || act == kActSilu,
              "pagcp::masked_bn_act: act code must be 0 (identity), 1 (relu) or 2 (silu), got ", act);
  const int64_t C = x.size(1);
  TORCH_CHECK(scale.numel() == C && shift.numel() == C, "pagcp::masked_bn_act: scale and shift need ", C,
              " elements (one per channel)");
  TORCH_CHECK(keep.dim() == 2 && keep.size(1) == C, "pagcp::masked_bn_act: keep must be R x ", C);
  BnActShape shp;
  shp.R = keep.size(0);
  if (expand) {
    shp.N = x.size(0);
  } else {
    TORCH_CHECK(shp.R > 0 && x.size(0) % shp.R == 0, "pagcp::masked_bn_act: with expand=false x needs R*N rows (R=",
                shp.R, "), got ", x.size(0));
    shp.N = x.size(0) / shp.R;
  }
  const int64_t rows = expand ? shp.R * shp.N : x.size(0);
  TORCH_CHECK(out.dim() == 4 && out.size(0) == rows && out.size(1) == C && out.size(2) == x.size(2) &&
                  out.size(3) == x.size(3),
              "pagcp::masked_bn_act: out must have shape (", rows, ", ", C, ", ", x.size(2), ", ", x.size(3), ")");
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "pagcp::masked_bn_act: out dtype must equal x dtype");
  TORCH_CHECK(out.device() == x.device() && scale.device() == x.device() && shift.device() == x.device() &&
                  keep.device() == x.device(),
              "pagcp::masked_bn_act: x, scale, shift, keep and out must be on one device");
  return shp;
}

at::Tensor empty_bn_act_out(const at::Tensor& x, const at::Tensor& keep, bool expand) {
  TORCH_CHECK(x.dim() == 4 && keep.dim() == 2, "pagcp::masked_bn_act: x must be 4-D and keep 2-D");
  const int64_t rows = expand ? keep.size(0) * x.size(0) : x.size(0);
  const bool cl = is_channels_last(x) && !x.is_contiguous();
  return at::empty({rows, x.size(1), x.size(2), x.size(3)}, x.options().memory_format(layout_of(cl)));
}

void check_stats_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "pagcp::channel_activation_stats: x must be N x C x H x W, got ", x.dim(), " dims");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "pagcp::channel_activation_stats: x must be float32, float16 or bfloat16");
}

TORCH_LIBRARY(pagcp, m) {
  m.def("filter_saliency(Tensor[] weights, Tensor keep, int[] keep_offsets, int[] groups, int p, bool mean) -> Tensor");
  m.def("masked_bn_act(Tensor x, Tensor scale, Tensor shift, Tensor keep, int act, bool expand) -> Tensor");
  m.def("masked_bn_act_out(Tensor x, Tensor scale, Tensor shift, Tensor keep, int act, bool expand, "
        "Tensor(a!) out) -> ()");
  m.def("channel_activation_stats(Tensor x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pagcp, CPU, m) {
  m.impl("filter_saliency", &filter_saliency_cpu);
  m.impl("masked_bn_act", &masked_bn_act_cpu);
  m.impl("masked_bn_act_out", &masked_bn_act_out_cpu);
  m.impl("channel_activation_stats", &channel_activation_stats_cpu);
}

}  // namespace pagcp

// `import pagcp._C` loads this library (which registers the ops above); the module itself only
// reports how it was built.
static PyModuleDef pagcp_c_module = {PyModuleDef_HEAD_INIT, "_C", "pagcp compiled ops (torch.ops.pagcp.*)", -1,
                                     nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&pagcp_c_module);
  if (mod == nullptr) return nullptr;
#ifdef PAGCP_WITH_CUDA
  PyModule_AddIntConstant(mod, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(mod, "WITH_CUDA", 0);
#endif
  PyModule_AddIntConstant(mod, "OPENMP_THREADS", omp_get_max_threads());
  return mod;
}
