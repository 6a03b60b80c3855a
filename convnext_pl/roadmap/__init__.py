"""The paper's modernization roadmap (Sec. 2, Fig. 2) in one place: the 17 steps as data (``steps``), the network
that builds any step (``net``), the size/cost report against the paper (``report``), the ladder that trains every
step (``ladder``) and ``python -m convnext_pl.roadmap`` (``cli``). ``steps`` and ``net`` depend on torch only."""
