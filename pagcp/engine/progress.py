"""Progress of a search for people: a tqdm bar over units that shows the current unit's candidates, or one
log line per unit where the output is not a terminal (log files stay clean).

``SearchProgress`` is a callable for the ``progress=`` argument of :func:`pagcp.prune`; it takes the events the
search sends (``start`` of a unit, ``candidates`` decided so far, the finished ``unit``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("pagcp.search")


class SearchProgress:
    """tqdm bar over the units of a search; ``close()`` it (or use it as a context manager) when done."""

    def __init__(self, desc: str = "pruning", enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(desc=desc, unit="unit", disable=None if enabled else True)
        self.enabled = enabled
        self.gflops = ""
        self.started = False
        self._redirect = None
        if not self.bar.disable:  # log lines go above the bar, never glued onto it
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def __call__(self, p: dict[str, Any]) -> None:
        if not self.started:  # a resumed search starts part-way: those units are not counted in its rate (ETA)
            self.started = True
            self.bar.initial = self.bar.n = p.get("position", 0)
        if p["event"] == "unit":
            text = f"{p['unit']} ratio {p['ratio']:.2f} -> {p['gflops']:.3f} GFLOPs"
            if self.bar.disable:
                if not self.enabled:
                    return
                tripped = f" (tripped: {p['tripped']})" if p["tripped"] else ""
                log.info("unit %d/%d %s%s", p["position"], p["total"], text, tripped)
                return
            self.gflops = f"{p['gflops']:.3f} GFLOPs"
            self.bar.total, self.bar.n = p["total"], p["position"]
            self.bar.set_postfix_str(text)
        elif not self.bar.disable:
            if p["event"] == "start":
                self.bar.total, self.bar.n = p["total"], p["position"]
            done = p.get("done", 0)
            self.bar.set_postfix_str(f"{p['unit']}: {done}/{p['candidates']} candidates {self.gflops}".rstrip())

    def close(self) -> None:
        self.bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
