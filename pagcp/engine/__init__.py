"""The PAGCP engine: the search and the oracle it asks, on top of the channel graph.

settings (:mod:`.settings`) -> rule arithmetic, λ and scope (:mod:`.rule`) -> channel saliency
(:mod:`.saliency`) -> compact weights (:mod:`.compact`) and the executor that walks the graph on them
(:mod:`.executor`) -> per-task losses (:mod:`.oracle`) -> the greedy search with rounds and resume
(:mod:`.search`, its state file in :mod:`.state`) -> the Python API (:mod:`.api`). :mod:`.yolo` builds the
oracle of a YOLOv5 model; :mod:`.naive` computes the same decisions the straightforward way (an independent
check); :mod:`.baselines` holds the rules PAGCP is compared with.
"""
