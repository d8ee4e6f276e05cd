// The shared argument checks and helpers declared in pagcp_common.h, used by the CPU (pagcp_ops.cpp) and
// CUDA (pagcp_ops_cuda.cu) kernels alike, and the mapping of activation names to the Act tag.

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "pagcp_common.h"

namespace pagcp {

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

Act parse_act(c10::string_view act) {
  if (act == "relu") return Act::Relu;
  if (act == "silu") return Act::Silu;
  TORCH_CHECK(act == "identity", "pagcp::masked_bn_act: activation '", std::string(act),
              "' is not implemented by this build of pagcp._C");
  return Act::Identity;
}

bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat layout_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

BnActShape check_bn_act(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& keep,
                        bool expand, const at::Tensor& out) {
  TORCH_CHECK(x.dim() == 4, "pagcp::masked_bn_act: x must be N x C x H x W, got ", x.dim(), " dims");
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

}  // namespace pagcp
