"""The prune run as a library: cycles -> slice -> fine-tune -> validate -> report, resumable from its files.

:func:`prune_run` (:mod:`.run`) runs it from :class:`RunSettings` (:mod:`.settings`: the search's
:class:`~pagcp.engine.settings.PruneSettings`, :class:`OracleSettings`, :class:`FinetuneSettings`,
:class:`ExecutionSettings`); the cycles and their files are :mod:`.cycles`, run folders and what a resumed run
may change :mod:`.resume`, the report files :mod:`.report`. It lives above ``engine`` (the algorithm, which may
not import training or deployment) and ``families`` (which know the models): it is the one place that joins
the search, a family's trainer and its exporter. ``python -m pagcp.prune`` and the benchmarks call it.
"""

from pagcp.pipeline.run import load_job, prune_run
from pagcp.pipeline.settings import ExecutionSettings, FinetuneSettings, OracleSettings, RunSettings

__all__ = ["ExecutionSettings", "FinetuneSettings", "OracleSettings", "RunSettings", "load_job", "prune_run"]
