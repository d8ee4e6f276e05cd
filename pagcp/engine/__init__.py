"""The PAGCP engine: settings, the decision rule, saliency, the executor, the oracle, the search, the API.

settings (:mod:`.settings`) -> rule arithmetic (:mod:`.rule`) -> channel saliency (:mod:`.saliency`) ->
compact/candidate execution (:mod:`.executor`) -> per-task losses (:mod:`.oracle`) -> the greedy search with
rounds and resume (:mod:`.search`, state in :mod:`.state`) -> the Python API (:mod:`.api`). :mod:`.yolo`
builds the oracle of a YOLOv5 model; :mod:`.naive` computes the same decisions the straightforward way (an
independent check); :mod:`.baselines` holds the rules PAGCP is compared with.
"""
