"""Weights to start from, in one place: the catalogue of released files (``catalogue``), download and cache
(``download``), key maps of other code bases (``conversions``), reading any supported file into a network
(``loading``), whole dense-task checkpoints (``tasks``) and the state-dict comparison (``state_dict``).
``python -m convnext_pl.weights list|download`` is the catalogue's command line. Depends on torch only."""
