"""Exact resume: a run killed (SIGKILL) or preempted (SIGTERM) mid-epoch and resumed with ``--ckpt_path last`` ends
bit-identical to an uninterrupted run; and the pieces that make it so (sampler, loader, seeding, 'last' lookup)."""

import os
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DIGITS, QUIET, run_main
from torch.utils.data import Dataset

from convnext_pl.data.resumable import ResumableDataLoader, ResumableSampler, SeededSamples
from convnext_pl.errors import UserError
from convnext_pl.training.checkpointing import find_last_checkpoint
from convnext_pl.training.cli import cli_main
from convnext_pl.training.seeding import StepSeeding, derive_seed, seed_all

# 2 epochs of 4 batches; last.ckpt every 3 steps (3 and 6 are mid-epoch). Every source of randomness of the recipe
# is on: augmentation (torch), drop path (torch), Mixup/CutMix (numpy), and EMA state to restore.
RUN = [
    "fit", "--config", DIGITS, "--seed_everything", "0",
    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
    *QUIET, "--data.init_args.batch_size", "16", "--checkpoint.every_n_train_steps", "3",
    "--model.net.init_args.drop_path_rate", "0.2", "--model.mixup_alpha", "0.8", "--model.cutmix_alpha", "1.0",
    "--trainer.callbacks+=convnext_pl.training.callbacks.EMA", "--trainer.callbacks.decay", "0.9",
]  # fmt: skip
TOTAL_STEPS = 8


def _main(args: list[str], root: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_main([*args, "--trainer.default_root_dir", str(root)], timeout=timeout, check=False)


def _interrupt_at(step: int, signal_name: str) -> list[str]:
    return ["--trainer.callbacks+=helpers.callbacks.SignalAtStep", "--trainer.callbacks.step", str(step),
            "--trainer.callbacks.signal_name", signal_name]  # fmt: skip


def _last(root: Path, version: int) -> dict:
    path = root / "digits" / f"version_{version}" / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_bit_identical(resumed: dict, reference: dict) -> None:
    assert resumed["global_step"] == reference["global_step"] == TOTAL_STEPS
    for key in ("state_dict", "current_model_state"):  # EMA weights, raw weights
        assert resumed[key].keys() == reference[key].keys()
        different = [
            name for name in reference[key] if not torch.equal(resumed[key][name], reference[key][name])
        ]
        assert not different, f"{key}: {len(different)} tensors differ, first {different[0]}"
    for got, want in zip(resumed["optimizer_states"][0]["state"].values(),
                         reference["optimizer_states"][0]["state"].values(), strict=True):  # fmt: skip
        assert all(torch.equal(got[k], want[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_torch_thread) -> dict:
    """The final checkpoint of the uninterrupted run, trained in this process on one thread as the subprocesses
    are (run_python): a fresh interpreter spends ~9 s importing torch and Lightning, and only the interrupted and
    the resumed run need one."""
    root = tmp_path_factory.mktemp("straight")
    cli_main([*RUN, "--trainer.default_root_dir", str(root)])
    return _last(root, 0)


@pytest.mark.slow
def test_run_killed_mid_epoch_and_resumed_ends_bit_identical(reference, tmp_path):
    # SIGKILL when step 7 begins: last.ckpt holds step 6, two batches into epoch 1, and step 6 is lost.
    # The interrupted and the resumed run read with 2 workers, the reference in-process: augmentation
    # depends on neither.
    workers = ["--data.init_args.num_workers", "2"]
    killed = _main(RUN + workers + _interrupt_at(7, "SIGKILL"), tmp_path)
    assert killed.returncode == -9
    assert _last(tmp_path, 0)["global_step"] == 6
    resumed = _main(RUN + workers + ["--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stderr and "version_0/checkpoints/last.ckpt" in resumed.stderr
    assert "not resumable" not in resumed.stderr  # Lightning's warning about loaders that restart the epoch
    _assert_bit_identical(_last(tmp_path, 1), reference)  # the resumed run logs into a new version folder


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_143_and_the_run_resumes_bit_identical(reference, tmp_path):
    preempted = _main(RUN + _interrupt_at(4, "SIGTERM"), tmp_path)
    # Lightning finishes the batch that was running (step 4 -> 5) and stops; the callback saves and says so.
    assert preempted.returncode == 143
    message = preempted.stderr.strip().splitlines()[-1]
    saved = tmp_path / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    assert message == (
        f"Received SIGTERM: stopped after step 5 (epoch 1) and saved {saved}; "
        "to resume, run the same command with --ckpt_path last"
    )
    assert _last(tmp_path, 0)["global_step"] == 5
    resumed = _main(RUN + ["--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_bit_identical(_last(tmp_path, 1), reference)


class _Augmented(Dataset):
    """Item i is i plus noise from all three global generators, as real augmentations draw."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(
            [index, torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64
        )


def _loader(num_workers: int = 0, seed: int = 7) -> ResumableDataLoader:
    dataset = _Augmented()
    sampler = ResumableSampler(dataset, seed=seed)
    return ResumableDataLoader(SeededSamples(dataset), batch_size=4, sampler=sampler, drop_last=True,
                               num_workers=num_workers)  # fmt: skip


def _epoch(loader: ResumableDataLoader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
    return list(loader)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restored_loader_yields_the_rest_of_the_epoch_exactly(num_workers):
    straight = _loader()
    _epoch(straight, 0)
    epoch1 = _epoch(straight, 1)
    interrupted = _loader(num_workers)
    interrupted.sampler.set_epoch(1)
    seen = []
    for batch in interrupted:  # stop after 2 of the 6 batches, as a kill would
        seen.append(batch)
        if len(seen) == 2:
            break
    state = interrupted.state_dict()
    assert state == {"seed": 7, "epoch": 1, "batches": 2, "world_size": 1}
    resumed = _loader(num_workers, seed=123)  # the checkpoint's seed wins over the new run's
    resumed.load_state_dict(state)
    rest = _epoch(resumed, 1)
    assert len(rest) == 4 and resumed.state_dict()["batches"] == 6
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, epoch1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(_epoch(resumed, 2), _epoch(straight, 2), strict=True))


def test_a_mid_epoch_position_of_another_world_size_is_refused_and_an_end_of_epoch_one_is_not():
    # Each rank's part of an epoch depends on the number of ranks: the rest of a 2-rank epoch cannot be split
    # among 1 or 4 ranks without repeating or skipping samples.
    with pytest.raises(UserError, match="saved 2 batches into an epoch by 2 processes, and this run has 1"):
        _loader().load_state_dict({"seed": 7, "epoch": 1, "batches": 2, "world_size": 2})
    loader = _loader()
    loader.load_state_dict({"seed": 7, "epoch": 2, "batches": 0, "world_size": 2})
    assert loader.sampler.epoch == 2 and loader.sampler.start == 0


def test_seeded_reads_repeat_and_leave_the_global_generators_where_they_were():
    samples = SeededSamples(_Augmented())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = (torch.rand(()).item(), np.random.rand(), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    first = samples[(3, 99)]
    batch = samples.__getitems__([(3, 99), (5, 100)])
    assert (torch.rand(()).item(), np.random.rand(), random.random()) == expected
    assert torch.equal(samples[(3, 99)], first) and torch.equal(batch[0], first)  # the key decides the draws
    assert not torch.equal(samples[(3, 98)], first)


def test_sampler_shards_one_permutation_per_epoch_and_starts_at_the_restored_offset():
    dataset = _Augmented()
    ranks = [ResumableSampler(dataset, num_replicas=2, rank=r, seed=3) for r in range(2)]
    shards = [[index for index, _ in sampler] for sampler in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(24))  # disjoint shards of one permutation
    assert shards[0] == [index for index, _ in ranks[0]]  # the same again for the same epoch
    ranks[0].set_epoch(1)
    full = list(ranks[0])
    assert [index for index, _ in full] != shards[0]
    assert full[0][1] == derive_seed(3, 1, full[0][0])  # each index carries its (seed, epoch, index) seed
    ranks[0].start = 4
    assert list(ranks[0]) == full[4:]
    ranks[0].start = 4
    ranks[0].set_epoch(2)  # a restored offset belongs to its epoch only
    assert len(list(ranks[0])) == 12


def test_step_seeding_depends_on_the_step_and_rank_only_and_its_seed_is_checkpointed():
    class Trainer:
        global_rank, current_epoch = 0, 3

    seeding = StepSeeding(seed=11)
    seeding.on_train_batch_start(Trainer(), None, None, batch_idx=5)
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(100)  # whatever ran in between
    seeding.on_train_batch_start(Trainer(), None, None, batch_idx=5)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    Trainer.global_rank = 1
    seeding.on_train_batch_start(Trainer(), None, None, batch_idx=5)
    assert not torch.equal(torch.rand(3), first[0])  # each rank draws its own stream
    restored = StepSeeding()
    restored.load_state_dict(seeding.state_dict())
    assert restored.seed == 11


@pytest.mark.gpu
def test_step_seeding_seeds_the_gpu_generator_too():
    torch.zeros(1, device="cuda")  # CUDA is initialised once the model is on the GPU, before the first step
    seed_all(5)
    first = torch.rand(3, device="cuda")
    torch.rand(100, device="cuda")
    seed_all(5)
    assert torch.equal(torch.rand(3, device="cuda"), first)  # drop-path masks on the GPU repeat as well


def test_last_checkpoint_is_the_newest_of_any_version(tmp_path):
    assert find_last_checkpoint(tmp_path / "digits") is None
    files = []
    for version in (0, 1, 2):
        folder = tmp_path / "digits" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        files.append(folder / "last.ckpt")
        files[-1].write_bytes(b"x")
    (tmp_path / "digits" / "version_2" / "checkpoints" / ".checkpoint-abc.partial").write_bytes(b"x")
    now = time.time()
    for age, path in zip((30, 10, 20), files, strict=True):
        os.utime(path, (now - age, now - age))
    assert find_last_checkpoint(tmp_path / "digits") == files[1]
