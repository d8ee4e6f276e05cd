"""What the channel analysis knows about torch ops and layers: which keep, join or cut channels.

- element-wise functions and methods: every tensor argument of the output's width carries the same
  channels (residual adds unite them);
- parameter-free layers that act on each channel on its own (activations, pooling, padding, upsampling);
- reductions, splits, concatenations and flattens, handled by their own rules in :mod:`pagcp.graph.channels`.

Anything not listed is opaque: its inputs' channels are pinned (never pruned). Extend these tables to teach
the analysis a new op.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

#: Element-wise functions and methods: every tensor argument of the output's width is the same channel.
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.neg, operator.pos, operator.abs, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.maximum, torch.minimum, torch.where, torch.relu, torch.sigmoid, torch.tanh,
    torch.exp, torch.abs, torch.neg, torch.clamp, torch.clip, torch.sqrt, torch.rsqrt, torch.square,
    torch.pow, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.celu,
    F.mish, F.softplus, F.sigmoid, F.tanh, F.hardtanh, F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, F.upsample, F.pad,
}  # fmt: skip
ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "exp", "abs", "neg", "clamp", "clamp_", "clip", "pow", "sqrt", "contiguous", "clone",
    "float", "half", "double", "bfloat16", "to", "cpu", "cuda", "type_as", "detach", "requires_grad_",
    "expand_as",
}  # fmt: skip
#: Parameter-free torch.nn layers that act on each channel on its own.
CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.GELU,
    nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)  # fmt: skip
REDUCTIONS = {"mean", "sum", "amax", "amin"}
SPLITS = {torch.chunk, torch.split, torch.tensor_split}
CATS = {torch.cat, torch.concat, torch.concatenate}
FLATTENS = {torch.flatten}
SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement"}

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
