"""The commands built on the library: ``vpt-train`` / ``vpt-eval`` (:mod:`.cli`), ``vpt-tune`` (:mod:`.tune`),
``vpt-report`` (:mod:`.report`) and ``vpt-bench`` (:mod:`.bench`). The library (``vpt`` outside this package)
never imports from here (``tests/test_architecture.py``)."""
