"""The command lines: ``prune``, ``val`` and ``train`` parse flags, make run folders and print results.

They are thin over the library (:mod:`pagcp.engine`, :mod:`pagcp.detection`, :mod:`pagcp.training`);
``python -m pagcp.<command>`` runs them through the small modules ``pagcp/<command>.py``.
"""
