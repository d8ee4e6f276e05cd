"""Physical slicing: a new model with the pruned channels removed from every Conv2d, norm and Linear.

The model is deep-copied and each affected module is resized in place on the copy (same class, same
name, same place in the module tree), so the result is an ordinary model: a YOLOv5 one saves and
loads with ``pagcp.save_model`` / ``pagcp.load_model``, which take widths from the tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from pagcp.graph.channels import ModuleChannels
from pagcp.graph.keep import PrunePlan


def _param(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)


def _slice_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> None:
    weight = conv.weight
    if out_keep is not None:
        weight = weight[out_keep.to(weight.device)]
        if conv.bias is not None:
            conv.bias = _param(conv.bias, conv.bias[out_keep.to(weight.device)])
        conv.out_channels = weight.shape[0]
    if in_keep is not None:
        weight = weight[:, in_keep.to(weight.device)]
        conv.in_channels = weight.shape[1] * conv.groups
    conv.weight = _param(conv.weight, weight)


def _slice_depthwise(conv: nn.Conv2d, keep: torch.Tensor) -> None:
    _slice_conv(conv, keep, None)
    conv.in_channels = conv.out_channels = conv.groups = int(keep.sum())


def _slice_norm(norm: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> None:
    device = (norm.weight if norm.weight is not None else norm.running_mean).device
    keep = keep.to(device)
    if norm.weight is not None:
        norm.weight = _param(norm.weight, norm.weight[keep])
        norm.bias = _param(norm.bias, norm.bias[keep])
    if norm.running_mean is not None:
        norm.running_mean = norm.running_mean[keep].clone()
        norm.running_var = norm.running_var[keep].clone()
    norm.num_features = int(keep.sum())


def _slice_linear(linear: nn.Linear, in_keep: torch.Tensor) -> None:
    linear.weight = _param(linear.weight, linear.weight[:, in_keep.to(linear.weight.device)])
    linear.in_features = linear.weight.shape[1]


def slice_model(model: nn.Module, modules: Mapping[str, ModuleChannels], plan: PrunePlan) -> nn.Module:
    """A deep copy of ``model`` with every channel that ``plan`` prunes removed (``model`` is untouched)."""
    model = copy.deepcopy(model)
    for name, (out_keep, in_keep) in plan.items():
        module = model.get_submodule(name)
        kind = modules[name].kind
        if kind == "conv":
            _slice_conv(module, out_keep, in_keep)
        elif kind == "depthwise":
            _slice_depthwise(module, out_keep)
        elif kind == "bn":
            _slice_norm(module, out_keep)
        elif in_keep is not None:
            _slice_linear(module, in_keep)
    return model
