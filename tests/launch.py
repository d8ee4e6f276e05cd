"""Helpers for tests that launch prune commands in processes of their own: a rendezvous port nothing else holds,
the small yolov8n-demo run the Ultralytics process tests share."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no other launch holds now: a fixed one lets two test runs on one machine join each other's group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def yolov8n_demo_args(finetune_epochs: int) -> list[str]:
    """A small ``pagcp.prune`` run of yolov8n-demo on the CPU (backbone scope, 8 oracle images, 64 px)."""
    return ["--weights", "yolov8n-demo", "--data", "demo:train=16,val=24,img=96", "--img", "64", "--batch", "4",
            "--subset", "8", "--compression", "backbone", "--finetune-epochs", str(finetune_epochs),
            "--finetune-batch", "8", "--no-latency", "--device", "cpu", "--json"]  # fmt: skip
