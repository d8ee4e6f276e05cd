"""The typed settings of a prune run, how they are saved in its folder, and what a resumed run may change.

:class:`RunSettings` holds the model (``weights``), the search's :class:`~pagcp.engine.settings.PruneSettings`,
the oracle's :class:`OracleSettings`, the fine-tuning :class:`FinetuneSettings` and the run folder; together
they decide what a run computes, so a resumed run must share them. :class:`ExecutionSettings` (device,
candidates per pass, suffix replay, loader workers, the latency step) only decide how fast it runs, so a
resumed run may change them.

:data:`FLAT` names every setting once, with its command-line flag: ``python -m pagcp.prune`` builds the
settings from its flags by it (:func:`from_flat`), messages name the flag at fault by it, and run folders
written by older versions (flat ``opt.yaml``) are read by it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pagcp.engine.compat import compat_mode
from pagcp.engine.oracle import ORACLE_DTYPES
from pagcp.engine.replay import REPLAY_MODES
from pagcp.engine.settings import PruneSettings
from pagcp.errors import ConfigError

ORACLE_SPLITS = ("train", "val")
#: the version of the settings file a run folder holds (``opt.yaml``)
SETTINGS_VERSION = 2


@dataclass(frozen=True)
class OracleSettings:
    """The oracle's data: ``subset`` images (a number, "all", or "auto": the compat mode's default, 64 or all)
    of ``split`` (None: the mode's, train or val) of ``data``, drawn with ``seed``, at ``img`` px in batches of
    ``batch`` (the reference doubles it), forward passes in ``dtype`` (fp32, bf16, fp16)."""

    data: str = "demo"
    img: int = 320
    batch: int = 16
    subset: int | str = "auto"
    split: str | None = None
    seed: int = 0
    dtype: str = "fp32"


@dataclass(frozen=True)
class FinetuneSettings:
    """``cycles`` prune -> fine-tune cycles of ``cycle_epochs`` each (with more than one), then the final
    ``epochs``; batch ``batch``, hyper-parameters ``hyp`` (the family's trainer reads them)."""

    epochs: int = 1
    cycles: int = 1
    cycle_epochs: int = 1
    batch: int = 16
    hyp: str = "finetune"
    #: weight of the distillation loss in every fine-tune, the unpruned model (--weights) as teacher; 0: none
    distill: float = 0.0


@dataclass(frozen=True)
class ExecutionSettings:
    """How a run is executed, never what it decides: ``device`` ("" for the first GPU, else the CPU), ``chunk``
    candidates per pass (0: the device's default), ``suffix_replay`` (pagcp.engine.replay), loader ``workers``,
    ``latency`` (ONNX export and ONNX Runtime latency of the original and final models), ``json`` (the command
    prints the report as a JSON line at the end; kept so that ``--resume`` does too)."""

    device: str = ""
    chunk: int = 0
    suffix_replay: str = "auto"
    workers: int = 0
    latency: bool = True
    json: bool = False


@dataclass
class RunSettings:
    """Everything a prune run needs (see the module docstring); ``project/name`` is where a new run's folder is
    made (``name``, ``name2``, ... when taken)."""

    weights: str = "yolov5n-demo"
    search: PruneSettings = field(default_factory=PruneSettings)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    project: str = "runs/prune"
    name: str = "exp"

    def __post_init__(self) -> None:
        self.weights = str(self.weights)
        check(self)

    def identity(self) -> dict[str, Any]:
        """What decides the run's results (a resumed run must share it)."""
        return {"weights": self.weights, "search": self.search.to_dict(), "oracle": dataclasses.asdict(self.oracle),
                "finetune": dataclasses.asdict(self.finetune)}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, **self.identity(), "execution": dataclasses.asdict(self.execution),
                "project": self.project, "name": self.name}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        """The settings :meth:`to_dict` wrote (or a flat ``opt.yaml`` of an older version, :func:`from_flat`)."""
        if "version" not in d:
            return from_flat(d)
        return cls(weights=d["weights"], search=PruneSettings.from_dict(d["search"]),
                   oracle=OracleSettings(**d["oracle"]), finetune=FinetuneSettings(**d["finetune"]),
                   execution=ExecutionSettings(**d.get("execution", {})), project=d.get("project", "runs/prune"),
                   name=d.get("name", "exp"))  # fmt: skip

    @property
    def oracle_split(self) -> str:
        """The split the oracle's images come from (``--oracle-split``, else the compat mode's)."""
        return self.search.mode.split(self.oracle.split)

    @property
    def oracle_subset(self) -> int | None:
        """The oracle's image count (None: the whole split)."""
        return self.search.mode.subset(self.oracle.subset)

    @property
    def oracle_batch(self) -> int:
        """The oracle's batch size (``--batch``, doubled by the reference's mode)."""
        return self.search.mode.oracle_batch(self.oracle.batch)


#: flat name (the prune command's flag, underscores for dashes) -> (section, field); "" is RunSettings itself
FLAT: dict[str, tuple[str, str]] = {
    "weights": ("", "weights"), "project": ("", "project"), "name": ("", "name"),
    "data": ("oracle", "data"), "img": ("oracle", "img"), "batch": ("oracle", "batch"),
    "subset": ("oracle", "subset"), "oracle_split": ("oracle", "split"), "seed": ("oracle", "seed"),
    "oracle_dtype": ("oracle", "dtype"),
    "finetune_epochs": ("finetune", "epochs"), "cycles": ("finetune", "cycles"),
    "cycle_epochs": ("finetune", "cycle_epochs"), "finetune_batch": ("finetune", "batch"), "hyp": ("finetune", "hyp"),
    "distill": ("finetune", "distill"),
    "device": ("execution", "device"), "chunk": ("execution", "chunk"), "suffix_replay": ("execution", "suffix_replay"),
    "workers": ("execution", "workers"), "latency": ("execution", "latency"), "json": ("execution", "json"),
    **{f.name: ("search", f.name) for f in dataclasses.fields(PruneSettings)
       if f.name not in ("ratios", "units", "backbone_layers", "reach_gflops", "original_widths")},
}  # fmt: skip
_SECTIONS = {"oracle": OracleSettings, "finetune": FinetuneSettings, "execution": ExecutionSettings}


def flag(section: str, name: str) -> str:
    """The command-line flag of a setting (``--subset``, ``--finetune-epochs``), or its section.field name."""
    flat = next((k for k, v in FLAT.items() if v == (section, name)), None)
    return f"--{flat.replace('_', '-')}" if flat else f"{section}.{name}"


def from_flat(values: dict[str, Any]) -> RunSettings:
    """Settings from flat names (:data:`FLAT`: the prune command's flags); unknown names are refused, names not
    given keep their defaults. ``subset`` None means all images (the command's ``--subset all``)."""
    unknown = sorted(set(values) - set(FLAT) - {"resume"})
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    parts: dict[str, dict[str, Any]] = {"": {}, "search": {}, **{s: {} for s in _SECTIONS}}
    for key, value in values.items():
        if key in FLAT:
            section, name = FLAT[key]
            parts[section][name] = "all" if (key, value) == ("subset", None) else value
    return RunSettings(**parts[""], search=PruneSettings(**parts["search"]),
                       **{s: cls(**parts[s]) for s, cls in _SECTIONS.items()})  # fmt: skip


def check(s: RunSettings) -> None:
    """Refuse settings out of range, naming the flag (before anything is loaded or any folder is made)."""
    o, f, e = s.oracle, s.finetune, s.execution
    lows = ((o.img, "oracle", "img", 32), (o.batch, "oracle", "batch", 1), (e.workers, "execution", "workers", 0),
            (f.epochs, "finetune", "epochs", 0), (f.batch, "finetune", "batch", 1), (f.cycles, "finetune", "cycles", 1),
            (f.cycle_epochs, "finetune", "cycle_epochs", 0), (e.chunk, "execution", "chunk", 0))  # fmt: skip
    for value, section, name, low in lows:
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{flag(section, name)} {value}: must be an integer >= {low}")
    if not (isinstance(f.distill, (int, float)) and f.distill >= 0):
        raise ConfigError(f"--distill {f.distill}: the weight of the distillation loss must be >= 0 (0: none)")
    if o.subset not in ("auto", "all") and not (isinstance(o.subset, int) and o.subset >= 1):
        raise ConfigError(f"--subset {o.subset}: a number of images >= 1, 'all' or 'auto'")
    if o.split is not None and o.split not in ORACLE_SPLITS:
        raise ConfigError(f"--oracle-split {o.split}: use one of {', '.join(ORACLE_SPLITS)}")
    if o.dtype not in ORACLE_DTYPES:
        raise ConfigError(f"--oracle-dtype {o.dtype}: use one of {', '.join(ORACLE_DTYPES)}")
    if e.suffix_replay not in REPLAY_MODES:
        raise ConfigError(f"--suffix-replay {e.suffix_replay}: use one of {', '.join(REPLAY_MODES)}")
    compat_mode(s.search.compat).split(o.split)  # a split the mode refuses
    last = s.search.round + f.cycles - 1 + s.search.rounds_at_most - 1  # the last round index a cycle may reach
    for r in range(s.search.round, last + 1):
        s.search.rate_and_bound(r)
