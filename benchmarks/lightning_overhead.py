"""Per-step cost of the Lightning path in milliseconds: main.py fit's trainer against the bare loop, step by step.

    python benchmarks/lightning_overhead.py --model convnext_atto --image-size 32 --batch-size 64 \\
        --block 5 --rounds 80 --json runs/bench/atto_overhead.json

``train_throughput.py`` times each path in windows of several seconds; on a shared machine the load changes
from one window to the next, and its repeats spread by +-10% or more, more than the framework costs. Here one
``fit`` of the trainer ``python main.py fit`` builds (the same one as ``train_throughput.py``'s lightning path)
runs ``--block`` x ``--rounds`` timed steps, and every ``--block`` of them it pauses (inside a callback, untimed)
for ``--block`` steps of the bare loop on their own network, optimizer and batches. Both paths are timed one step
at a time on the training thread's CPU clock (one torch thread, data loaded in-process), so they alternate
within seconds and see the same machine. A Lightning step runs from one ``on_train_batch_start`` to the next
(its hooks, logging, the next batch); a bare step from one ``step`` to the next (the same work without
Lightning). Reported: median, 10th and 25th percentile ms per step of each path, their difference and ratio, and
the paired ratio (median over rounds of the two back-to-back blocks' time ratio). ``--pool runs/bench/a*.json``
summarises several runs' files: the median over runs and the ratio over all their steps.
CPU only (``--clock thread`` semantics); on a GPU use ``train_throughput.py``, whose windows synchronise.
"""

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from train_throughput import BareLoop, MemoryMeter, _load_average, main_py_fit_args, synthetic_data
from train_throughput import parse_args as throughput_args

from convnext_pl.models import create_model
from convnext_pl.training.cli import cli_main

WARMUP = 3  # untimed steps of each path: allocator growth, first-touch page faults, AdamW state


class Alternate(L.Callback):
    """Times each Lightning step and, every ``block`` steps, runs and times ``block`` bare steps."""

    def __init__(self, bare: BareLoop, batches, block: int, steps: int):
        self.bare, self.batches, self.block, self.steps = bare, batches, block, steps
        self.lightning_ms: list[float] = []
        self.bare_ms: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.thread_time()
        if self._start is not None and batch_idx > WARMUP:
            self.lightning_ms.append(1e3 * (now - self._start))
        if batch_idx >= WARMUP and (batch_idx - WARMUP) % self.block == 0 and len(self.bare_ms) < self.steps:
            memory = MemoryMeter(torch.device("cpu"))
            last = time.thread_time()
            for _ in range(self.block):
                self.bare.step(*next(self.batches), memory)
                now = time.thread_time()
                self.bare_ms.append(1e3 * (now - last))
                last = now
        self._start = time.thread_time()


def _percentile(values: list[float], fraction: float) -> float:
    return sorted(values)[int(fraction * (len(values) - 1))]


def run(args) -> dict:
    steps = args.block * args.rounds
    args.warmup, args.steps = WARMUP, steps  # main_py_fit_args runs warmup + steps
    args.train_size = args.batch_size * (WARMUP + steps + 1)
    data = synthetic_data(args)
    torch.manual_seed(0)
    model_args = {"num_classes": args.num_classes, "patch_size": args.patch_size or 4}
    bare = BareLoop(create_model(args.model, **model_args), args, total_steps=WARMUP + steps)

    def batches():
        while True:
            yield from data.train_dataloader()

    load_before = _load_average()
    stream = batches()
    for _ in range(WARMUP):
        bare.step(*next(stream), MemoryMeter(torch.device("cpu")))
    alternate = Alternate(bare, stream, args.block, steps)
    with tempfile.TemporaryDirectory() as root:
        cli = cli_main(main_py_fit_args(args, root), run=False)
        cli.trainer.callbacks.append(alternate)
        cli.trainer.fit(cli.model, cli.datamodule)
    lightning, plain = alternate.lightning_ms, alternate.bare_ms
    summary = {}
    for name, fraction in (("median", 0.5), ("p25", 0.25), ("p10", 0.1)):
        light, bare_ms = _percentile(lightning, fraction), _percentile(plain, fraction)
        summary[name] = {
            "lightning_ms": round(light, 2),
            "bare_ms": round(bare_ms, 2),
            "overhead_ms": round(light - bare_ms, 2),
            "lightning_over_bare": round(bare_ms / light, 4),
        }
    return {
        **summary,
        "paired_lightning_over_bare": round(_paired_ratio(lightning, plain, args.block), 4),
        "mean_lightning_over_bare": round(statistics.mean(plain) / statistics.mean(lightning), 4),
        "steps": {"lightning": len(lightning), "bare": len(plain)},
        "load_average": {"before": load_before, "after": _load_average()},
        "lightning_ms_per_step": [round(ms, 3) for ms in lightning],
        "bare_ms_per_step": [round(ms, 3) for ms in plain],
        "config": {k: v for k, v in vars(args).items() if k != "json"},
    }


def _paired_ratio(lightning: list[float], plain: list[float], block: int) -> float:
    """Median over rounds of bare / Lightning time of the round's two blocks, run back to back (the bare block
    just before its Lightning block): the load changes from second to second far more than within a round."""
    rounds = min(len(lightning), len(plain)) // block
    return statistics.median(
        sum(plain[r * block : (r + 1) * block]) / sum(lightning[r * block : (r + 1) * block])
        for r in range(rounds)
    )


def pool(files: list[Path]) -> dict:
    """Several runs' JSON files together: the median over runs of each ratio, and the ratio of the medians of all
    their steps pooled (on a shared machine single runs spread by several percent)."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    lightning = [ms for run in runs for ms in run["lightning_ms_per_step"]]
    plain = [ms for run in runs for ms in run["bare_ms_per_step"]]
    per_run = [run["median"]["lightning_over_bare"] for run in runs]
    return {
        "runs": len(runs),
        "median_over_runs": statistics.median(per_run),
        "range_over_runs": [min(per_run), max(per_run)],
        "p10_median_over_runs": statistics.median(run["p10"]["lightning_over_bare"] for run in runs),
        "paired_median_over_runs": statistics.median(run["paired_lightning_over_bare"] for run in runs),
        "pooled": {
            "steps": {"lightning": len(lightning), "bare": len(plain)},
            "lightning_ms": round(statistics.median(lightning), 2),
            "bare_ms": round(statistics.median(plain), 2),
            "lightning_over_bare": round(statistics.median(plain) / statistics.median(lightning), 4),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--block", type=int, default=5, help="steps of one path before switching to the other"
    )
    parser.add_argument("--rounds", type=int, default=40, help="blocks of each path (steps = block x rounds)")
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        help="summarise these runs' --json files together instead of measuring",
    )
    known, rest = parser.parse_known_args(argv)
    # The model, data and trainer options are train_throughput.py's (CPU, one thread, thread clock).
    args = throughput_args([*rest, "--device", "cpu", "--threads", "1", "--clock", "thread"])
    args.block, args.rounds, args.pool = known.block, known.rounds, known.pool
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.pool:
        result = pool(args.pool)
        print(json.dumps(result, indent=2))
        return result
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    result = run(args)
    shown = ("median", "p25", "p10", "paired_lightning_over_bare", "mean_lightning_over_bare", "load_average")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
