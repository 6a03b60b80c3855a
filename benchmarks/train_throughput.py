"""Training images/s and peak memory: this project's Lightning path, a bare PyTorch loop, and timm's model.

    python benchmarks/train_throughput.py --device cpu --model convnext_atto --image-size 32 --batch-size 64 \\
        --steps 10 --json runs/bench/atto_32.json
    python benchmarks/train_throughput.py --device cuda --model convnext_tiny --image-size 224 --batch-size 128 \\
        --precision bf16-mixed --channels-last --compile --json runs/bench/tiny_224_cuda.json

Three paths train the same variant on the same synthetic batches (``SyntheticDataModule``'s loader):

- ``lightning``: the trainer ``python main.py fit`` builds (``cli_main(..., run=False)`` on the digits experiment
  with the synthetic data and the benchmark's model): the CLI's default callbacks (learning-rate monitor, checkpoint
  policy, NaN guard, step seeding), its CSV/TensorBoard loggers logging every ``--log-every-n-steps``, progress bar
  and model summary off, validation off; its ``fit`` writes ``last.ckpt`` after the timed window, into a temporary
  folder;
- ``bare``: our network in a plain loop with the same AdamW parameter groups, warm-up + cosine schedule,
  precision (autocast, plus a GradScaler for 16-mixed), compile and channels_last;
- ``timm``: ``timm.create_model(name, pretrained=False)`` in that same plain loop.

``lightning_over_bare`` is the cost of the framework; ``ours_over_timm`` (bare / timm) compares the two model
implementations. Each measurement times ``--steps`` steps after ``--warmup`` untimed ones; the paths run
interleaved (in a rotating order) ``--repeats`` times and the medians are reported. Peak memory is the
process RSS after each forward and backward pass on the CPU (it includes every model alive in the process) and
``torch.cuda.max_memory_allocated`` on a GPU, where model-FLOPs utilisation is also reported.

``--hook-costs`` also times, inside the lightning path's windows, every training-step hook of each callback and
the module's ``self.log`` calls (``lightning_hooks_ms_per_step``, median over repeats), to show where the
framework's cost goes; its timing wrappers add microseconds per call, so take the ratio from a run without it.
"""

import argparse
import collections
import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from convnext_pl.data import SyntheticDataModule
from convnext_pl.models import create_model
from convnext_pl.models.flops import count_macs
from convnext_pl.training.cli import cli_main
from convnext_pl.training.optim import build_optimizer, warmup_cosine

PATHS = ("lightning", "bare", "timm")
LR, WEIGHT_DECAY = 4e-3, 0.05  # the paper's recipe (docs/paper.md §4); the schedule spans the whole benchmark

# Dense tensor-core peaks in TFLOP/s (vendor datasheets, SXM parts) for model-FLOPs utilisation; --peak-tflops
# overrides. fp32 rows are TF32 on Ampere and newer (what cuDNN uses for convolutions by default).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.5},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "V100": {"bf16": None, "fp16": 125.0, "fp32": 15.7},
}


# ------------------------------------------------------------------------------------------------- measuring
class MemoryMeter:
    """Peak memory of a timed window: CUDA's allocator peak, or on the CPU the largest process RSS seen when a step
    holds the most, after the forward pass (activations) and after the backward pass (gradients).

    Sampling at those two points rather than from a polling thread keeps the timing clean: such a thread takes the
    GIL from the training loop, and on a loaded machine it can be descheduled while holding it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self.active = False

    def start(self) -> None:
        self.peak_bytes, self.active = 0, True
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def sample(self) -> None:
        if self.active and self.device.type != "cuda":
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def stop(self) -> int:
        self.active = False
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        return self.peak_bytes


def _rss_bytes() -> int:
    try:  # Linux: the current resident set (pages) of this process
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # elsewhere fall back to the lifetime peak, which still bounds the window's
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Window:
    """Times ``steps`` training steps and their peak memory; ``sync`` waits for queued GPU work.

    Args:
        device: where the steps run.
        steps: steps inside the window.
        clock: ``"wall"`` (elapsed time) or ``"thread"``: CPU time of the training thread, which on a CPU with
            ``--threads 1`` and in-process data loading is all the work, and is far less disturbed than wall
            time by other jobs on a shared machine.
    """

    def __init__(self, device: torch.device, steps: int, clock: str = "wall"):
        self.device, self.steps, self.memory = device, steps, MemoryMeter(device)
        self.clock = time.thread_time if clock == "thread" else time.perf_counter
        self.images_per_s = self.peak_bytes = 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self.memory.start()
        self._start = self.clock()

    def stop(self, batch_size: int) -> None:
        self.sync()
        elapsed = self.clock() - self._start
        self.peak_bytes = self.memory.stop()
        self.images_per_s = batch_size * self.steps / elapsed


# ------------------------------------------------------------------------------------------------------ paths
TRAINING_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


class HookClock:
    """Time per call of each callback's training-step hooks and of the module's ``self.log``, counted only while
    the measurement window is open. Each runs once per step here (one ``self.log`` call, no accumulation)."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.active = False

    def ms_per_call(self) -> dict[str, float]:
        return {label: 1e3 * seconds / self.calls[label] for label, seconds in self.seconds.items()}

    def attach(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for callback in trainer.callbacks:
            for hook in TRAINING_STEP_HOOKS:
                if getattr(type(callback), hook) is not getattr(L.Callback, hook):  # overridden: it does work
                    self._wrap(callback, hook, f"{type(callback).__name__}.{hook}")
        self._wrap(module, "log", f"{type(module).__name__}.log")

    def _wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if not self.active:
                return original(*args, **kwargs)
            start = self.clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += self.clock() - start
                self.calls[label] += 1

        setattr(owner, name, timed)


class _LightningWindow(L.Callback):
    """Opens the window at the first timed batch and closes it after the last one, inside ``Trainer.fit``."""

    def __init__(self, window: Window, warmup: int, batch_size: int, hooks: HookClock | None = None):
        self.window, self.warmup, self.batch_size, self.hooks = window, warmup, batch_size, hooks

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.window.start()
            if self.hooks is not None:
                self.hooks.active = True

    def on_before_backward(self, trainer, pl_module, loss):
        self.window.memory.sample()

    def on_after_backward(self, trainer, pl_module):
        self.window.memory.sample()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.window.steps - 1:
            self.window.stop(self.batch_size)
            if self.hooks is not None:
                self.hooks.active = False


DIGITS = str(Path(__file__).resolve().parents[1] / "configs" / "experiment" / "digits.yaml")


def main_py_fit_args(args, root: str) -> list[str]:
    """The command line of ``python main.py fit`` for the benchmark's model, data and settings."""
    fields = ("num_classes", "image_size", "train_size", "batch_size")
    data_config = {
        "class_path": "convnext_pl.data.SyntheticDataModule",
        "init_args": {f: getattr(args, f) for f in fields},
    }
    net = [
        "--model.net.init_args.name",
        args.model,
        "--model.net.init_args.patch_size",
        str(args.patch_size or 4),
    ]
    return [
        "--config", DIGITS, "--data", json.dumps(data_config), *net,
        "--model.channels_last", str(args.channels_last).lower(), "--model.compile", str(args.compile).lower(),
        "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu", "--trainer.devices", "1",
        "--trainer.precision", args.precision, "--trainer.max_steps", str(args.warmup + args.steps),
        "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", str(args.log_every_n_steps), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", root,
        "--nonfinite_loss.check_gradients", str(args.check_gradients).lower(),
    ]  # fmt: skip


def measure_lightning(args) -> Window:
    """One ``fit`` of the trainer ``main.py fit`` builds, timed inside by :class:`_LightningWindow`; with
    ``--hook-costs`` the window also carries ``hook_ms_per_step``."""
    window = Window(torch.device(args.device), args.steps, args.clock)
    hooks = HookClock(window.clock) if args.hook_costs else None
    with tempfile.TemporaryDirectory() as root:
        cli = cli_main(main_py_fit_args(args, root), run=False)
        if hooks is not None:
            hooks.attach(cli.trainer, cli.model)
        cli.trainer.callbacks.append(_LightningWindow(window, args.warmup, args.batch_size, hooks))
        cli.trainer.fit(cli.model, cli.datamodule)
    if hooks is not None:
        window.hook_ms_per_step = hooks.ms_per_call()
    return window


class BareLoop:
    """The plain PyTorch training loop: what ``Trainer.fit`` does for ``ImageClassifier``, minus Lightning.

    Args:
        net: the network (ours or timm's), already on the device.
        args: the parsed command line (device, precision, compile, channels_last, steps).
        total_steps: optimizer steps the schedule spans (the benchmark's whole length, as in the fit path).
    """

    def __init__(self, net: nn.Module, args, total_steps: int):
        self.device = torch.device(args.device)
        self.clock = args.clock
        self.channels_last = args.channels_last
        if args.channels_last:
            net.to(memory_format=torch.channels_last)
        if args.compile:
            net.compile()
        self.net = net
        self.optimizer = build_optimizer(net, LR, WEIGHT_DECAY)
        self.scheduler = LambdaLR(self.optimizer, warmup_cosine(0, total_steps))
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.precision == "16-mixed")

    def step(self, images: torch.Tensor, targets: torch.Tensor, memory: MemoryMeter) -> None:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = F.cross_entropy(self.net(images), targets)
        self.optimizer.zero_grad(
            set_to_none=True
        )  # after the forward pass, where Lightning's closure does it
        memory.sample()
        self.scaler.scale(loss).backward()
        memory.sample()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def measure(self, batches: Callable[[], Iterator], warmup: int, steps: int, batch_size: int) -> Window:
        window = Window(self.device, steps, self.clock)
        for index, (images, targets) in enumerate(batches()):
            if index == warmup:
                window.start()
            self.step(images, targets, window.memory)
            if index == warmup + steps - 1:
                window.stop(batch_size)
                break
        return window


# ------------------------------------------------------------------------------------------------------- main
def synthetic_data(args) -> SyntheticDataModule:
    """The benchmark's synthetic batches (``args.train_size`` images), set up for fitting: what the bare loop reads
    and, through ``main_py_fit_args``, what the lightning path is given."""
    data = SyntheticDataModule(
        num_classes=args.num_classes,
        image_size=args.image_size,
        train_size=args.train_size,
        batch_size=args.batch_size,
    )
    data.setup("fit")
    return data


def build(args) -> tuple[dict[str, Callable[[], Window]], dict]:
    """The three measurements as callables, plus facts about the models (parameters, MACs)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model_args = {"num_classes": args.num_classes}
    if args.patch_size is not None:
        model_args["patch_size"] = args.patch_size
    args.train_size = args.batch_size * (args.warmup + args.steps)
    data = synthetic_data(args)
    ours = create_model(args.model, **model_args)
    theirs = timm.create_model(args.model, pretrained=False, **model_args)
    info = {
        "params_ours": sum(p.numel() for p in ours.parameters()),
        "params_timm": sum(p.numel() for p in theirs.parameters()),
        "macs_per_image": count_macs(ours, args.image_size),
    }
    total_steps = (args.repeats + 1) * (args.warmup + args.steps)
    bare = BareLoop(ours.to(device), args, total_steps)
    timm_loop = BareLoop(theirs.to(device), args, total_steps)
    measurements = {
        "lightning": lambda: measure_lightning(args),
        "bare": lambda: bare.measure(data.train_dataloader, args.warmup, args.steps, args.batch_size),
        "timm": lambda: timm_loop.measure(data.train_dataloader, args.warmup, args.steps, args.batch_size),
    }
    return measurements, info


def run(args) -> dict:
    """Interleaved repeats (one untimed round first), medians, ratios and the environment, as one dict."""
    measurements, info = build(args)
    load_before = _load_average()
    for path in PATHS:  # untimed round: compilation, allocator growth, first-touch page faults
        measurements[path]()
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    peaks: dict[str, list[float]] = {path: [] for path in PATHS}
    hook_ms: dict[str, list[float]] = collections.defaultdict(list)
    for repeat in range(args.repeats):
        for path in PATHS[repeat % 3 :] + PATHS[: repeat % 3]:  # rotate so no path always runs first
            window = measurements[path]()
            rates[path].append(window.images_per_s)
            peaks[path].append(window.peak_bytes / 2**20)
            for hook, ms in getattr(window, "hook_ms_per_step", {}).items():
                hook_ms[hook].append(ms)
            print(f"repeat {repeat}  {path:<9} {window.images_per_s:10.3f} images/s", flush=True)
    median = {path: statistics.median(rates[path]) for path in PATHS}
    result = {
        "lightning_img_s": round(median["lightning"], 3),
        "bare_img_s": round(median["bare"], 3),
        "timm_img_s": round(median["timm"], 3),
        "lightning_over_bare": round(median["lightning"] / median["bare"], 4),
        "ours_over_timm": round(median["bare"] / median["timm"], 4),
        "peak_memory_mib": {path: round(max(peaks[path]), 1) for path in PATHS},
        "memory_kind": "cuda_max_memory_allocated" if args.device == "cuda" else "process_rss",
        "repeats_img_s": {path: [round(rate, 3) for rate in rates[path]] for path in PATHS},
        **info,
    }
    if hook_ms:
        per_step = {hook: round(statistics.median(ms), 3) for hook, ms in hook_ms.items()}
        result["lightning_hooks_ms_per_step"] = dict(sorted(per_step.items(), key=lambda kv: -kv[1]))
    if args.device == "cuda":
        result["mfu"] = _mfu(median, info["macs_per_image"], args)
    result["config"] = {k: v for k, v in vars(args).items() if k != "json"}
    result["environment"] = _environment(args, load_before)
    return result


def _mfu(median: dict[str, float], macs_per_image: int, args) -> dict | None:
    """Model-FLOPs utilisation: a training step costs about 3 forward passes, 2 FLOPs per multiply-add."""
    name = torch.cuda.get_device_name()
    kind = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(args.precision, "fp32")
    peak = args.peak_tflops or next((v[kind] for k, v in PEAK_TFLOPS.items() if k in name), None)
    if not peak:
        return None
    return {path: round(rate * 6 * macs_per_image / (peak * 1e12), 4) for path, rate in median.items()}


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpu_name() -> str:
    try:  # Linux names the model; platform.processor() often says only "x86_64"
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _environment(args, load_before) -> dict:
    device = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    return {
        "device": device,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="convnext_atto", help="a variant both this project and timm name")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per path (median)")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed", "16-mixed"], default="32-true")
    parser.add_argument("--compile", action="store_true", help="nn.Module.compile() every network")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and batches")
    parser.add_argument(
        "--patch-size", type=int, help="stem patch size (ours: total stride drops; timm: kept)"
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="images per wall-clock second, or per CPU second of the training thread (CPU only: a shared machine)",
    )
    parser.add_argument(
        "--log-every-n-steps", type=int, default=10, help="the lightning path's logging interval (the demo's)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument(
        "--hook-costs",
        action="store_true",
        help="also time each callback's training-step hooks and self.log in the lightning path (ms per step)",
    )
    parser.add_argument(
        "--check-gradients",
        action="store_true",
        help="the lightning path's NaN guard also checks every gradient (--nonfinite_loss.check_gradients true)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the GPU's peak for MFU (default: from a small table)"
    )
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    return parser.parse_args(argv)


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads``, refusing ``--clock thread`` where it would not measure the only thread doing the work."""
    if args.clock == "thread" and (args.device == "cuda" or (args.threads or torch.get_num_threads()) > 1):
        raise SystemExit("--clock thread measures one CPU thread: use it with --device cpu --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # else a device banner per repeat
    result = run(args)
    summary = {k: result[k] for k in ("lightning_img_s", "bare_img_s", "timm_img_s")}
    summary |= {k: result[k] for k in ("lightning_over_bare", "ours_over_timm", "peak_memory_mib")}
    if "lightning_hooks_ms_per_step" in result:
        summary["lightning_hooks_ms_per_step"] = result["lightning_hooks_ms_per_step"]
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
