"""The ``pagcp`` operator namespace of torch.library: op schemas, fake kernels and reference kernels.

Everything here is pure Python and registered at import, whether or not the compiled extension exists:

- the schemas of ``torch.ops.pagcp.*`` (:data:`SCHEMAS`; activations are passed by name, ``str act``);
- a fake (meta) kernel per op, so the ops trace under ``torch.compile`` and pass ``torch.library.opcheck``;
- the pure-PyTorch references of :mod:`pagcp.ops.reference` as the ``CompositeExplicitAutograd`` kernels.

The compiled extension ``pagcp._C``, loaded afterwards by :mod:`pagcp.ops.extension`, only adds kernels
for the ``CPU`` and (where built) ``CUDA`` dispatch keys; a key-specific kernel beats the composite one,
so the references serve exactly the devices the extension does not cover (all of them without it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagcp.ops import reference

NAMESPACE = "pagcp"

SCHEMAS = {
    "filter_saliency": (
        "filter_saliency(Tensor[] weights, Tensor keep, int[] keep_offsets, int[] groups, int p, bool mean) -> Tensor"
    ),
    "masked_bn_act": "masked_bn_act(Tensor x, Tensor scale, Tensor shift, Tensor keep, str act, bool expand) -> Tensor",
    "masked_bn_act_out": (
        "masked_bn_act_out(Tensor x, Tensor scale, Tensor shift, Tensor keep, str act, bool expand, "
        "Tensor(a!) out) -> ()"
    ),
    "channel_activation_stats": "channel_activation_stats(Tensor x) -> (Tensor, Tensor)",
}

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")  # kept alive: dropping it would unregister the ops
for _schema in SCHEMAS.values():
    _LIBRARY.define(_schema)


def qualified(name: str) -> str:
    """``pagcp::name``, the name torch.library and the dispatcher know an op by."""
    return f"{NAMESPACE}::{name}"


# ----------------------------------------------------------------------------------- fake kernels


@torch.library.register_fake(qualified("filter_saliency"))
def _filter_saliency_fake(
    weights: Sequence[torch.Tensor],
    keep: torch.Tensor,
    keep_offsets: Sequence[int],
    groups: Sequence[int],
    p: int,
    mean: bool,
) -> torch.Tensor:
    total = sum(int(w.shape[0]) for w in weights)
    return keep.new_empty((total,), dtype=torch.float32)


@torch.library.register_fake(qualified("masked_bn_act"))
def _masked_bn_act_fake(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, act: str, expand: bool
) -> torch.Tensor:
    return reference.empty_bn_act_out(x, keep, expand)


@torch.library.register_fake(qualified("masked_bn_act_out"))
def _masked_bn_act_out_fake(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str,
    expand: bool,
    out: torch.Tensor,
) -> None:
    return None


@torch.library.register_fake(qualified("channel_activation_stats"))
def _channel_activation_stats_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((x.shape[1],), dtype=torch.float32), x.new_empty((x.shape[1],), dtype=torch.float32)


# ------------------------------------------------------------------------------ reference kernels


def _masked_bn_act_ref(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, act: str, expand: bool
) -> torch.Tensor:
    return reference.masked_bn_act(x, scale, shift, keep, act, expand)


def _masked_bn_act_out_ref(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    keep: torch.Tensor,
    act: str,
    expand: bool,
    out: torch.Tensor,
) -> None:
    reference.masked_bn_act(x, scale, shift, keep, act, expand, out)


_REFERENCE_KERNELS = {
    "filter_saliency": reference.filter_saliency_packed,
    "masked_bn_act": _masked_bn_act_ref,
    "masked_bn_act_out": _masked_bn_act_out_ref,
    "channel_activation_stats": reference.channel_activation_stats,
}
for _name, _kernel in _REFERENCE_KERNELS.items():
    _LIBRARY.impl(_name, _kernel, "CompositeExplicitAutograd")


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether op ``name`` has a kernel registered for exactly ``dispatch_key`` (e.g. "CPU", "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualified(name), dispatch_key)
