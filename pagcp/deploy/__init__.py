"""Deployment of pruned models: ONNX export (:func:`export_onnx`), the ONNX Runtime-vs-PyTorch check
(:func:`max_abs_diff`) and ONNX Runtime CPU latency (:func:`onnx_latency`, :func:`compare_latency`).

onnx and onnxruntime are optional (``pip install "pagcp[export]"``): importing this package never needs
them; the functions raise :class:`~pagcp.errors.ConfigError` with the install command when they are missing.
"""

from pagcp.deploy.latency import compare_latency, onnx_latency
from pagcp.deploy.onnx_export import export_onnx, max_abs_diff

__all__ = ["compare_latency", "export_onnx", "max_abs_diff", "onnx_latency"]
