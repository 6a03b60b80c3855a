"""Training infrastructure every task shares: the command line (``cli``), run folders (``runs``), checkpoint
files and resume checks (``checkpointing``, ``checkpoint_io``, ``resume``), the optimizer recipe (``optim``),
seeding, the non-finite-loss guard, progress output, FSDP2 sharding and the EMA callback. Tasks build on it
through :class:`convnext_pl.tasks.base.TaskModule`; nothing here knows a task."""
