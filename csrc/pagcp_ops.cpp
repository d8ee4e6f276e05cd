// pagcp._C: the CPU (OpenMP) implementations of the pagcp ops, registered under the CPU dispatch key.
//
// The op schemas, fake kernels and reference kernels are defined in Python (pagcp/ops/library.py) before
// this library is loaded; it only attaches kernels to them:
//   filter_saliency(Tensor[] weights, Tensor keep, int[] keep_offsets, int[] groups, int p, bool mean) -> Tensor
//   masked_bn_act(Tensor x, Tensor scale, Tensor shift, Tensor keep, str act, bool expand) -> Tensor
//   masked_bn_act_out(..., Tensor(a!) out) -> ()
//   channel_activation_stats(Tensor x) -> (Tensor, Tensor)
// The CUDA implementations live in pagcp_ops_cuda.cu and register under the CUDA dispatch key; the argument
// checks both share are in pagcp_common.cpp.

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
template <typename T, Act ACT>
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
template <typename T, Act ACT>
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
                     Act act, int64_t R, int64_t N, bool expand, bool channels_last) {
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3);
  const T* xp = x.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const bool stream = std::is_same_v<T, float> && out.nbytes() >= kStreamBytes;
  auto run = [&](auto act_tag) {
    constexpr Act A = decltype(act_tag)::value;
    if (channels_last) {
      bn_act_pixels<T, A>(xp, s, b, k, op, R, N, C, HW, expand, stream);
    } else {
      bn_act_planes<T, A>(xp, s, b, k, op, R, N, C, HW, expand, stream);
    }
  };
  switch (act) {
    case Act::Silu: run(std::integral_constant<Act, Act::Silu>{}); break;
    case Act::Relu: run(std::integral_constant<Act, Act::Relu>{}); break;
    case Act::Identity: run(std::integral_constant<Act, Act::Identity>{}); break;
  }
}

void masked_bn_act_out_cpu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift,
                           const at::Tensor& keep, c10::string_view act_name, bool expand, const at::Tensor& out) {
  const Act act = parse_act(act_name);
  BnActShape shp = check_bn_act(x_in, scale, shift, keep, expand, out);
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
                             const at::Tensor& keep, c10::string_view act, bool expand) {
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

TORCH_LIBRARY_IMPL(pagcp, CPU, m) {
  m.impl("filter_saliency", &filter_saliency_cpu);
  m.impl("masked_bn_act", &masked_bn_act_cpu);
  m.impl("masked_bn_act_out", &masked_bn_act_out_cpu);
  m.impl("channel_activation_stats", &channel_activation_stats_cpu);
}

}  // namespace pagcp

// `import pagcp._C` loads this library (which registers the kernels above); the module itself only
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
