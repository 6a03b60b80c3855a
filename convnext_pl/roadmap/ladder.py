"""The roadmap ladder (paper Sec. 2, Fig. 2, trained here): every chosen step fitted with one recipe.

``python -m convnext_pl.roadmap train --config <experiment yaml> --epochs N [--steps 0 5 13] [--out DIR]
[--width-multiplier M] [--threads T] [--<cli key> <value> ...]`` calls :func:`run_ladder`: each step's network
replaces the experiment's ``model.net``, is trained through the project's CLI, and the measured table (CSV,
Markdown) and chart are written to ``DIR``.
"""

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Callback

from convnext_pl.errors import UserError
from convnext_pl.models.flops import count_macs
from convnext_pl.roadmap.report import markdown_table, plot, write_csv
from convnext_pl.roadmap.steps import MAIN_STEPS, STEPS, create_roadmap_model

LADDER_COLUMNS = ["step", "name", "top1", "params", "gflops", "train_img_per_s", "paper_top1"]


class TrainThroughput(Callback):
    """Training images per second over the training batches (forward, backward, optimizer step).

    The first ``skip_batches`` batches are not timed: they pay one-off allocations. Also records the input
    shape, so the ladder can count the trained network's GFLOPs at the size it was trained at.

    Args:
        skip_batches: batches at the start of training left out of the timing.
    """

    def __init__(self, skip_batches: int = 1):
        self.skip_batches = skip_batches
        self.images, self.seconds, self.batches, self.image_shape = 0, 0.0, 0, None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        images = batch[0]
        self.image_shape = tuple(images.shape[1:])  # (C, H, W)
        self.batches += 1
        if self.batches > self.skip_batches:
            self.seconds += time.perf_counter() - self._start
            self.images += len(images)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def train_step(
    name: str, config: str, epochs: int, out: Path, width_multiplier: float, extra: Sequence[str]
) -> dict:
    """Fit one roadmap step through the project's CLI and measure it.

    The step's network replaces the experiment's ``model.net``; options both accept (e.g. ``patch_size``)
    carry over, and ``extra`` CLI arguments come last, so they win.
    """
    from convnext_pl.training.cli import cli_main  # Lightning and the data stack load only when training

    net = {"class_path": f"{create_roadmap_model.__module__}.{create_roadmap_model.__name__}"}
    net["init_args"] = {"name": name, "width_multiplier": width_multiplier}
    args = ["fit", "--config", config, "--model.net", json.dumps(net), "--trainer.max_epochs", str(epochs)]
    args += ["--trainer.default_root_dir", str(out), "--run_name", name]
    args += [f"--trainer.callbacks+={TrainThroughput.__module__}.{TrainThroughput.__name__}", *extra]
    command_line, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees args and a command line
    try:
        cli = cli_main(args)
    finally:
        sys.argv = command_line
    meter = next(cb for cb in cli.trainer.callbacks if isinstance(cb, TrainThroughput))
    network = cli.model.net
    channels, height, width = meter.image_shape
    return dict(
        step=STEPS[name].index,
        name=name,
        top1=100 * float(cli.trainer.callback_metrics["val/acc1"]),
        params=sum(p.numel() for p in network.parameters()),
        gflops=count_macs(network, (height, width), channels) / 1e9,
        train_img_per_s=meter.images_per_second,
        paper_top1=STEPS[name].paper_top1,
        paper_gflops=STEPS[name].paper_gflops,
    )


def run_ladder(
    config: str,
    epochs: int,
    names: Sequence[str],
    out: str | Path,
    width_multiplier: float = 1.0,
    extra: Sequence[str] = (),
) -> list[dict]:
    """Train each step with the same recipe; write ``ladder.csv``, ``ladder.md`` and ``ladder.png`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        rows.append(train_step(name, config, epochs, out, width_multiplier, extra))
        write_csv(
            rows, out / "ladder.csv", LADDER_COLUMNS
        )  # after every step: a long run keeps partial results
    (out / "ladder.md").write_text(markdown_table(rows, LADDER_COLUMNS) + "\n")
    plot(rows, out / "ladder.png", measured_key="top1")
    return rows


def step_names(selection: Sequence[str] | None) -> list[str]:
    """Step numbers (``0 5 13``: the main line) or registered names (``roadmap_08_kernel5``) -> names.

    Raises:
        UserError: for a step that does not exist.
    """
    if not selection:
        return list(MAIN_STEPS)
    by_index = {STEPS[name].index: name for name in MAIN_STEPS}
    names = [by_index.get(int(item)) if item.isdigit() else item for item in selection]
    unknown = [item for item, name in zip(selection, names, strict=True) if name not in STEPS]
    if unknown:
        raise UserError(f"Unknown roadmap step {unknown[0]!r}: use 0-13 or one of {', '.join(STEPS)}.")
    return names
