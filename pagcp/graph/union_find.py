"""Union-find over channel ids, with the pins (channels that can never be pruned) and their first reason."""

from __future__ import annotations

import torch


class UnionFind:
    """Union-find over channel ids, with a pinned flag and the first reason each id was pinned."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pins: list[tuple[torch.Tensor, str]] = []

    def new(self, n: int, pinned: str | None = None) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = torch.arange(start, start + n, dtype=torch.long)
        if pinned is not None:
            self.pins.append((ids, pinned))
        return ids

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, ids: torch.Tensor, reason: str) -> None:
        if ids.numel():
            self.pins.append((ids, reason))

    def roots(self) -> torch.Tensor:
        return torch.tensor([self.find(i) for i in range(len(self.parent))], dtype=torch.long)
