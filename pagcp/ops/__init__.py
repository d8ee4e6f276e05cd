"""Public op entry points of pagcp, each with four backends behind one signature.

- :func:`filter_saliency` — per-filter Lp norm over alive input channels, all layers in one launch;
- :func:`masked_bn_act` / :func:`masked_bn_act_rows` — folded BN + activation + R candidate masks;
- :func:`channel_activation_stats` — per-channel mean |x| and mean x^2.

Every op takes ``backend=None|"torch"|"cpp"|"cuda"|"triton"``; see :mod:`pagcp.ops.registry` for how
``None`` resolves and :func:`backends` for what this machine can run. Importing this package defines the
``torch.ops.pagcp.*`` ops (:mod:`pagcp.ops.library`) and then loads the compiled kernels, if any
(:mod:`pagcp.ops.extension`); it never fails for want of them.
"""

from pagcp.ops import library  # noqa: F401  (first: the op schemas the extension's kernels attach to)
from pagcp.ops.activation_stats import channel_activation_stats
from pagcp.ops.bn_act import masked_bn_act, masked_bn_act_rows
from pagcp.ops.registry import BACKENDS, backends
from pagcp.ops.saliency import filter_saliency

__all__ = [
    "BACKENDS",
    "backends",
    "channel_activation_stats",
    "filter_saliency",
    "masked_bn_act",
    "masked_bn_act_rows",
]
