// Declarations shared by the CPU (pagcp_ops.cpp) and CUDA (pagcp_ops_cuda.cu) implementations: the
// activations this build implements and the argument checks (defined in pagcp_common.cpp), so both
// backends validate the same way.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <vector>

namespace pagcp {

// The activations of masked_bn_act this build implements. The ops receive an activation by name (the
// schema's `str act`, a key of ACTIVATIONS in pagcp/ops/reference.py); parse_act maps it once, at the op
// boundary, to this tag, which never leaves C++.
enum class Act { Identity, Relu, Silu };

// Per-layer geometry of a filter_saliency call; filter_start[l] is the global index of the first
// output filter of weight l (filter_start has one more entry than there are weights).
struct SaliencyPlan {
  std::vector<int64_t> cout, cpg, kk, groups, filter_start;
  int64_t total_filters = 0;
};

struct BnActShape {
  int64_t R = 0;  // candidate masks
  int64_t N = 0;  // batch rows per candidate
};

SaliencyPlan make_saliency_plan(at::TensorList weights, const at::Tensor& keep, at::IntArrayRef keep_offsets,
                                at::IntArrayRef groups, int64_t p);
Act parse_act(c10::string_view act);
bool is_channels_last(const at::Tensor& x);
at::MemoryFormat layout_of(bool channels_last);
BnActShape check_bn_act(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& keep,
                        bool expand, const at::Tensor& out);
at::Tensor empty_bn_act_out(const at::Tensor& x, const at::Tensor& keep, bool expand);
void check_stats_input(const at::Tensor& x);

}  // namespace pagcp
