"""Loading of the compiled extension ``pagcp._C`` and the fake (meta) kernels of its ops.

Importing this module never fails: when the extension is absent or broken, :data:`LOAD_ERROR` says why
and the ``cpp``/``cuda`` backends report themselves unavailable. When it loads, every op in
``torch.ops.pagcp`` gets a fake implementation so that it traces under ``torch.compile`` and passes
``torch.library.opcheck``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (see setup.py for the switches)"


def _import_extension() -> tuple[ModuleType | None, str]:
    try:
        from pagcp import _C
    except (ImportError, OSError) as exc:  # absent, or built against another torch
        return None, f"pagcp._C is not importable ({exc}); {BUILD_HINT}"
    return _C, ""


EXTENSION, LOAD_ERROR = _import_extension()


def with_cuda() -> bool:
    """Whether the loaded extension was compiled with its CUDA implementations."""
    return EXTENSION is not None and bool(getattr(EXTENSION, "WITH_CUDA", 0))


def bn_act_layout(x: torch.Tensor) -> torch.memory_format:
    """Memory format of masked_bn_act outputs: channels_last for channels_last inputs, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _register_fakes() -> None:
    @torch.library.register_fake("pagcp::filter_saliency")
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

    @torch.library.register_fake("pagcp::masked_bn_act")
    def _masked_bn_act_fake(
        x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, keep: torch.Tensor, act: int, expand: bool
    ) -> torch.Tensor:
        rows = keep.shape[0] * x.shape[0] if expand else x.shape[0]
        shape = (rows, x.shape[1], x.shape[2], x.shape[3])
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=bn_act_layout(x))

    @torch.library.register_fake("pagcp::masked_bn_act_out")
    def _masked_bn_act_out_fake(
        x: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        keep: torch.Tensor,
        act: int,
        expand: bool,
        out: torch.Tensor,
    ) -> None:
        return None

    @torch.library.register_fake("pagcp::channel_activation_stats")
    def _channel_activation_stats_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.new_empty((x.shape[1],), dtype=torch.float32), x.new_empty((x.shape[1],), dtype=torch.float32)


if EXTENSION is not None:
    _register_fakes()
