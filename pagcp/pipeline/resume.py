"""Run folders: making a new one with its settings, finding the one to continue, and what a resumed run may change.

A run folder holds its :class:`~pagcp.pipeline.settings.RunSettings` in ``opt.yaml``. ``--resume`` continues
with exactly those: settings that decide the results (the model, the search, the oracle's data, the
fine-tuning) may not differ, and a differing one is refused naming the flag, both values and what to do;
execution settings (device, candidates per pass, suffix replay, workers, the latency step) may, and a change is
said in the log. Nothing is ever replaced silently.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from pagcp.errors import ConfigError
from pagcp.pipeline.settings import RunSettings, flag
from pagcp.runs import increment_run_dir, write_text_atomic

log = logging.getLogger("pagcp.prune")
SETTINGS_FILE = "opt.yaml"


def latest_run(project: Path) -> Path:
    """The most recently changed run folder under ``project`` (one with a search state), for a bare --resume."""
    runs = [p for p in project.glob("*") if (p / "state.json").is_file() or (p / "cycle1" / "state.json").is_file()]
    if not runs:
        raise ConfigError(f"--resume: no run with a state.json under {project}")
    return max(runs, key=lambda p: p.stat().st_mtime)


def resolve_run_dir(resume: str | Path, project: str) -> Path:
    """The folder ``--resume`` names ("latest": the latest under ``project``), checked to be a run folder."""
    run_dir = latest_run(Path(project)) if str(resume) == "latest" else Path(resume)
    if not (run_dir / SETTINGS_FILE).is_file():
        raise ConfigError(f"--resume {run_dir}: no {SETTINGS_FILE} there; is it a pagcp.prune run folder?")
    return run_dir


def saved_settings(run_dir: Path) -> RunSettings:
    """The settings a run folder was made with."""
    try:
        return RunSettings.from_dict(yaml.safe_load((run_dir / SETTINGS_FILE).read_text()))
    except (yaml.YAMLError, TypeError, KeyError) as e:
        raise ConfigError(f"--resume {run_dir}: {SETTINGS_FILE} is not a run's settings ({e})") from e


def new_run_dir(settings: RunSettings) -> Path:
    """``project/nameN`` with the settings saved (made only once every check has passed)."""
    run_dir = increment_run_dir(settings.project, settings.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / SETTINGS_FILE, yaml.safe_dump(settings.to_dict(), sort_keys=False))
    return run_dir


def _differences(saved: dict[str, Any], given: dict[str, Any], section: str = "") -> list[tuple[str, Any, Any]]:
    """(flag, saved value, given value) of every setting that differs between two ``to_dict`` sections."""
    out = []
    for key in sorted(set(saved) | set(given)):
        a, b = saved.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, key)
        elif a != b:
            out.append((flag(section, key) if section else f"--{key.replace('_', '-')}", a, b))
    return out


def reconcile(run_dir: Path, given: RunSettings | None) -> RunSettings:
    """The settings to continue ``run_dir`` with: its saved ones, with ``given``'s execution settings; refuses a
    ``given`` whose results-deciding settings differ (see the module docstring)."""
    saved = saved_settings(run_dir)
    if given is None:
        return saved
    decided = _differences(saved.identity(), given.identity())
    if decided:
        listed = "; ".join(f"{name} {new!r} (the run has {old!r})" for name, old, new in decided)
        raise ConfigError(
            f"--resume {run_dir}: {listed}. A resumed run continues with the settings it was started with: "
            "drop these flags, or start a new run without --resume"
        )
    old, new = dataclasses.asdict(saved.execution), dataclasses.asdict(given.execution)
    for name, before, after in _differences(old, new, "execution"):
        log.info("--resume: %s %s instead of the run's %s (it changes how the run executes, not its results)",
                 name, after, before)  # fmt: skip
    return dataclasses.replace(saved, execution=given.execution)
