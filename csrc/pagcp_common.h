// Declarations shared by the CPU (pagcp_ops.cpp) and CUDA (pagcp_ops_cuda.cu) implementations:
// activation codes and the argument checks, so both backends validate the same way.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace pagcp {

// Activation codes of masked_bn_act (the Python wrapper maps "identity" / "relu" / "silu").
constexpr int64_t kActIdentity = 0;
constexpr int64_t kActRelu = 1;
constexpr int64_t kActSilu = 2;

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
bool is_channels_last(const at::Tensor& x);
at::MemoryFormat layout_of(bool channels_last);
BnActShape check_bn_act(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& keep,
                        int64_t act, bool expand, const at::Tensor& out);
at::Tensor empty_bn_act_out(const at::Tensor& x, const at::Tensor& keep, bool expand);
void check_stats_input(const at::Tensor& x);

}  // namespace pagcp
