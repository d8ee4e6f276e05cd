"""The search's state: everything needed to continue a PAGCP search exactly where it stopped.

In memory the keep-masks are :class:`~pagcp.graph.Keep` objects like everywhere else in the engine; the
state file (JSON, written atomically after every unit) stores them as pruned channel indices per unit, and
refuses to resume under other settings or on another model or data.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagcp.engine.settings import EXECUTION_KEYS, PruneSettings
from pagcp.errors import PagcpError
from pagcp.graph import Keep, KeepLayout
from pagcp.runs import write_json_atomic

#: what a state file written before a setting existed holds for it: the setting's default, which it ran with
ADDED_SINCE = {
    f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(PruneSettings)
}

STATE_VERSION = 1
_KEEPS = ("round_keep", "keep")
#: the keys of the state file, in the order they are written
_FILE_ORDER = (
    "settings", "fingerprint", "round", "order", "position", "lam", "thres", "base", "current", "round_keep",
    "keep", "decisions", "history", "evaluations", "seconds", "phase", "stop_rule", "version",
)  # fmt: skip


@dataclass
class UnitDecision:
    """What the search decided for one unit in one round."""

    name: str
    channels_before: int
    channels_after: int
    ratio: float
    tripped_task: str | None
    losses_start: list[float]
    losses_accepted: list[float] | None
    flops_removed: int
    evaluations: int
    selected: bool = False
    efficiency: float | None = None
    round: int = 0
    target_ratio: float | None = None  # the ratio applied to meet --target-gflops (0: none; None: as searched)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SearchState:
    """A search in progress: the round, the unit order and position, the rule's running values, the masks."""

    settings: dict[str, Any]
    fingerprint: dict[str, Any]
    round: int
    round_keep: Keep  # the masks the round started from
    keep: Keep  # the masks now
    order: list[str] = field(default_factory=list)
    position: int = 0
    lam: float = 1.0
    thres: float = 0.0
    base: list[float] = field(default_factory=list)
    current: list[float] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # finished rounds
    evaluations: int = 0
    seconds: float = 0.0
    phase: str = "search"  # "search" -> "done"
    stop_rule: str = ""  # why the search ended, in words (set when done)
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        """The state as written to the file (masks as pruned indices per unit)."""
        data = {name: getattr(self, name) for name in _FILE_ORDER}
        for name in _KEEPS:
            data[name] = data[name].pruned()
        return data

    def save(self, path: Path | None) -> None:
        if path is not None:
            write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path, settings: dict[str, Any], fingerprint: dict[str, Any], layout: KeepLayout):
        """The state saved at ``path``; raises PagcpError when it belongs to other settings, model or data."""
        if not path.is_file():
            raise PagcpError(f"{path}: no search state to resume from")
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION:
            raise PagcpError(f"{path}: state version {data.get('version')} is not {STATE_VERSION}")
        saved = {k: v for k, v in data["settings"].items() if k not in EXECUTION_KEYS}  # older files hold them
        saved = {**dict.fromkeys(settings), **ADDED_SINCE, **saved}  # a setting added since: its default
        if saved != settings:
            diff = sorted(k for k in saved if saved[k] != settings.get(k))
            raise PagcpError(
                f"{path}: the saved search used other settings ({', '.join(diff)}); "
                "resume with the same flags or start a new run"
            )
        if data["fingerprint"] != fingerprint:
            raise PagcpError(
                f"{path}: the saved search ran on another model or data ({data['fingerprint']} vs {fingerprint})"
            )
        for name in _KEEPS:
            data[name] = Keep.from_pruned(layout, data[name])
        return cls(**data)
