"""The PAGCP engine: the search and the oracle it asks, on top of the channel graph.

settings (:mod:`.settings`) -> rule arithmetic, λ and scope (:mod:`.rule`) -> channel saliency
(:mod:`.saliency`) -> compact weights (:mod:`.compact`) and the executor that walks the graph on them
(:mod:`.executor`) -> per-task losses (:mod:`.oracle`) -> the greedy search with rounds and resume
(:mod:`.search`, its state file in :mod:`.state`) -> the Python API (:mod:`.api`). The compatibility modes
are one object each (:mod:`.compat`); :mod:`.problem` holds a model with its oracle's batches and task loss
(a model family builds it, :mod:`pagcp.families`), :mod:`.oracle_data` draws and batches the oracle's items;
:mod:`.naive` computes the same decisions the straightforward way (an independent check); :mod:`.baselines`
holds the rules PAGCP is compared with.
"""
