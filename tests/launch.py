"""Helpers for tests that launch several processes: a rendezvous port nothing else holds."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no other launch holds now: a fixed one lets two test runs on one machine join each other's group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
