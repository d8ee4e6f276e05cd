"""Analytic FLOPs and parameter counts of a traced model under keep-masks (no forward pass).

Every count is an integer polynomial in the kept widths of the prunable modules, so the coefficients
are gathered once and a count costs one gather + segment sum over the global keep vector. The numbers
equal ``pagcp.model_stats`` of the sliced model exactly: FLOPs = 2 x multiply-adds of every Conv2d
call (per image), params = every parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from pagcp.graph.channels import ModuleChannels
from pagcp.graph.shapes import ConvCall

_CONV, _DEPTHWISE, _FIXED = 0, 1, 2


class Counter:
    """Kept widths, FLOPs and params of the prunable modules from a global keep vector."""

    def __init__(
        self,
        model: nn.Module,
        modules: dict[str, ModuleChannels],
        out_index: dict[str, torch.Tensor],
        in_index: dict[str, torch.Tensor],
    ):
        self.model = model
        self.modules = modules
        self.position = {name: i for i, name in enumerate(modules)}
        self.out_cat, self.out_seg = self._concat(out_index)
        self.in_cat, self.in_seg = self._concat(in_index)
        self._params_coefficients()
        self._flops_plans: dict[object, tuple[torch.Tensor, ...]] = {}

    def _concat(self, index: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        names = [n for n in self.modules if n in index]
        if not names:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        cat = torch.cat([index[n] for n in names])
        seg = torch.cat([torch.full((len(index[n]),), self.position[n], dtype=torch.long) for n in names])
        return cat, seg

    def kept(self, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept output and input widths of every prunable module (in ``modules`` order)."""
        n = len(self.modules)
        out_k = torch.zeros(n, dtype=torch.long).index_add_(0, self.out_seg, vector[self.out_cat].long())
        in_k = torch.zeros(n, dtype=torch.long).index_add_(0, self.in_seg, vector[self.in_cat].long())
        return out_k, in_k

    def _params_coefficients(self) -> None:
        # params after slicing = a*out*in + b*out + c*in + d, per module
        rows = []
        own = 0
        for m in self.modules.values():
            module = m.module
            own += sum(p.numel() for p in module.parameters(recurse=False))
            bias = int(getattr(module, "bias", None) is not None)
            if m.kind == "conv":
                kh, kw = module.kernel_size
                rows.append((kh * kw, bias, 0, 0))
            elif m.kind == "depthwise":
                kh, kw = module.kernel_size
                rows.append((0, kh * kw + bias, 0, 0))
            elif m.kind == "bn":
                rows.append((0, 2 * int(module.weight is not None), 0, 0))
            else:  # linear: out_features stay
                rows.append((0, 0, module.out_features, module.out_features * bias))
        self.param_coef = torch.tensor(rows, dtype=torch.long).reshape(-1, 4)
        self.fixed_params = sum(p.numel() for p in self.model.parameters()) - own

    def params(self, vector: torch.Tensor) -> int:
        """Number of parameters of the model pruned by ``vector``."""
        out_k, in_k = self.kept(vector)
        a, b, c, d = self.param_coef.unbind(1)
        return self.fixed_params + int((a * out_k * in_k + b * out_k + c * in_k + d).sum())

    def _flops_plan(self, key: object, calls: dict[str, list[ConvCall]]) -> tuple[torch.Tensor, ...]:
        plan = self._flops_plans.get(key)
        if plan is not None:
            return plan
        rows = []
        for name, conv_calls in calls.items():
            conv = self.model.get_submodule(name)
            kh, kw = conv.kernel_size
            spatial = sum(call.out_shape[-2] * call.out_shape[-1] for call in conv_calls)
            record = self.modules.get(name)
            mode = {"conv": _CONV, "depthwise": _DEPTHWISE}.get(record.kind, _FIXED) if record else _FIXED
            index = self.position[name] if record else 0
            rows.append((spatial * kh * kw, mode, index, conv.out_channels, conv.in_channels // conv.groups))
        plan = tuple(torch.tensor(rows, dtype=torch.long).reshape(-1, 5).unbind(1))
        self._flops_plans[key] = plan
        return plan

    def flops(self, vector: torch.Tensor, key: object, calls: dict[str, list[ConvCall]]) -> int:
        """2 x multiply-adds of every Conv2d call in ``calls`` (input shape ``key``) under ``vector``, per image."""
        factor, mode, index, out_full, in_full = self._flops_plan(key, calls)
        out_k, in_k = self.kept(vector)
        out_c = torch.where(mode == _FIXED, out_full, out_k[index])
        in_c = torch.where(mode == _CONV, in_k[index], torch.where(mode == _DEPTHWISE, 1, in_full))
        return 2 * int((factor * out_c * in_c).sum())
