"""Triton kernels of pagcp (installed as ``pagcp.kernels``) and their launchers.

Each module holds one op's ``@triton.jit`` kernel and the launcher that allocates, builds the grid and
launches; input checks and backend choice live in :mod:`pagcp.ops`. Supports Triton 3.6 and later and
runs under ``TRITON_INTERPRET=1`` on the CPU (float32).
"""

from .activation_stats import channel_activation_stats
from .bn_act import masked_bn_act
from .saliency import filter_saliency

__all__ = ["channel_activation_stats", "filter_saliency", "masked_bn_act"]
