"""Seeding in one place: the run's seed, seeds derived from where a draw is in training, and the callback that
seeds every training step.

A resumed run must draw exactly what the uninterrupted run drew, without saving generator states (their position
also depends on what ran before: data loading, sanity checks). So every random draw is seeded from the run's seed
and its place in training: a sample's augmentation from ``(seed, epoch, index)``
(:mod:`convnext_pl.data.resumable`), a training step's drop-path masks and Mixup/CutMix draws from
``(seed, rank, epoch, batch)`` (:class:`StepSeeding`).
"""

import contextlib
import os
import random
from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def run_seed() -> int:
    """The run's ``--seed_everything`` value, read as Lightning's own ``DistributedSampler`` reads it: the
    ``PL_GLOBAL_SEED`` variable ``seed_everything`` sets (and passes to spawned ranks); 0 when unseeded."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # The SplitMix64 finaliser (Steele et al., 2014): every input bit flips about half of the output bits.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys, e.g. ``(seed, epoch, index)``; the same keys give the same seed.

    32 bits because numpy's and python's legacy seeding and torch's CPU generator (Mersenne Twister) use that many.
    """
    state = 0
    for key in keys:
        state = _splitmix64(state ^ (key & _MASK64))
    return state >> 32


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every accelerator in use), numpy's and python's global generators with ``seed``."""
    torch.random.default_generator.manual_seed(seed)
    # Not torch.manual_seed: for each accelerator backend that is not initialised (CUDA on a CPU machine, XPU and
    # MTIA on a CUDA one) it queues the seed and records the caller's stack (traceback.format_stack), 0.6 ms per
    # training step deep in Lightning's loop, for generators the step never draws from.
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    if torch.xpu.is_initialized():
        torch.xpu.manual_seed_all(seed)
    torch.mps.manual_seed(seed)  # a no-op without MPS
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def seeded_cpu_generators(seed: int, restore: bool = True) -> Iterator[None]:
    """Run the block with torch's CPU generator, numpy's and python's global generators seeded with ``seed``
    (accelerator generators are left alone).

    Args:
        seed: the seed.
        restore: put the generators back in their previous states afterwards.
    """
    if restore:
        torch_state, numpy_state, python_state = (
            torch.get_rng_state(),
            np.random.get_state(),
            random.getstate(),
        )
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        if restore:
            torch.set_rng_state(torch_state)
            np.random.set_state(numpy_state)
            random.setstate(python_state)


@contextlib.contextmanager
def cpu_generators_untouched() -> Iterator[None]:
    """Run the block and put torch's CPU, numpy's and python's global generators back as they were: for I/O
    inside a sample's seeded read that may draw from them (boto3's transfers draw from python's ``random``), so
    that the sample's augmentation does not depend on whether its file had to be fetched first."""
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class StepSeeding(Callback):
    """Seeds torch, numpy and python's global generators at every training batch from
    ``(seed, rank, epoch, batch)``.

    Drop-path masks, Mixup/CutMix draws (timm draws them from numpy) and any other randomness of a training
    step then depend only on where the step is in training. A run resumed from a checkpoint draws exactly what
    the uninterrupted run drew, with no generator state in the checkpoint: saving states would not be enough,
    since their position also depends on what ran before the step (data loading, sanity checks).
    Each rank gets its own stream.

    Args:
        seed: base seed; None takes the run's ``--seed_everything`` value (``PL_GLOBAL_SEED``; 0 when unseeded).
            A resumed run keeps the seed saved in its checkpoint.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = run_seed()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        seed_all(derive_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx))

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.seed = state_dict["seed"]
