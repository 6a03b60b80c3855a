"""One prepared measurement for a machine with one GPU (about 6 minutes), printed as one table.

    make gpu-suite                       # or: python benchmarks/gpu_suite.py --json runs/gpu_suite.json
    python benchmarks/gpu_suite.py --dry-run   # every step on tiny sizes, on the CPU (tests/gpu/test_gpu_suite.py)

Steps, each a subprocess with its own time limit, run as a person would run them:

1. the ``gpu``-marked tests (``pytest -m gpu``);
2. ConvNeXt-T at 224, batch 128, bf16-mixed + channels_last: training images/s and peak memory of the Lightning
   path (the trainer ``main.py`` builds), a bare PyTorch loop and timm's model (``train_throughput.py``), eager
   and then compiled;
3. the ImageNet input pipeline on this machine's CPUs, the recipe path and the fast path, with 0, half and all of
   the cores as DataLoader workers (``data_throughput.py``), and its per-stage table;
4. the table: everything above, plus the CPU cores per GPU the measured training speed needs at each path's
   measured per-core rate.

``--dry-run`` runs the same steps with convnext_atto at 32 px, one step, tiny loaders, on the CPU, and with
``TORCHDYNAMO_DISABLE=1`` for the compiled row (inductor needs minutes on a CPU): it checks the wiring and the table,
and its numbers mean nothing. Its steps are the same commands, each in a process of its own with its own time limit,
but forked from this one once it has imported torch, Lightning and timm (:data:`PRELOAD`): a fresh interpreter spent
about 7 of a dry step's 10 CPU seconds on those imports, four times over. The full run starts every step fresh.
"""

import argparse
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
FULL = {
    "model": "convnext_tiny",
    "image_size": 224,
    "batch_size": 128,
    "steps": 20,
    "warmup": 5,
    "repeats": 3,
}
DRY = {"model": "convnext_atto", "image_size": 32, "batch_size": 8, "steps": 1, "warmup": 1, "repeats": 1}
# What the steps import, imported once before the dry run forks them.
PRELOAD = ("torch", "lightning", "timm", "convnext_pl.training.cli", "convnext_pl.data", "pytest")


def _in_subprocess(command: list[str], timeout: float, env: dict | None) -> tuple[int | str, str]:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})  # fmt: skip
        return done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        return "timeout", f"{err.stdout or ''}{err.stderr or ''}"


def _in_fork(command: list[str], timeout: float, env: dict | None) -> tuple[int | str, str]:
    """``command`` (``python SCRIPT ...`` or ``python -m MODULE ...``) in a fork of this process: its own process,
    arguments, working folder, environment, output and time limit, as with ``subprocess.run``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the step: never returns into the suite
            _exec_in_child(command, env, out.fileno(), err.fileno())
        deadline = time.monotonic() + timeout
        while not (waited := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        if waited[0]:
            status = os.waitstatus_to_exitcode(waited[1])
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        out.seek(0)
        err.seek(0)
        return status, (out.read() + err.read()).decode(errors="replace")


def _exec_in_child(command: list[str], env: dict | None, out: int, err: int) -> None:
    status = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        # Python-level streams onto the new descriptors too (a caller may have replaced sys.stdout, as pytest does).
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", buffering=1, closefd=False)
        os.chdir(ROOT)
        os.environ.update(env or {})
        if command[1] == "-m":
            sys.argv = command[2:]
            runpy.run_module(command[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = command[1:]
            sys.path.insert(0, str(Path(command[1]).parent))  # as `python SCRIPT` does
            runpy.run_path(command[1], run_name="__main__")
        status = 0
    except SystemExit as exit_:
        code = exit_.code
        status = code if isinstance(code, int) else int(code is not None)
        if isinstance(code, str):
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


_launch = _in_subprocess  # main() switches a dry run to _in_fork


def _run(name: str, command: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run one step; its exit status, seconds and the end of its output."""
    start = time.perf_counter()
    status, output = _launch(command, timeout, env)
    seconds = time.perf_counter() - start
    print(f"[{name}] exit {status} in {seconds:.0f} s", flush=True)
    if status != 0:
        print(output[-3000:], flush=True)
    return {"status": status, "seconds": seconds, "output": output}


def gpu_test_files() -> list[str]:
    """The test files that mark a test gpu, in every part's folder of tests/: importing every test module takes
    longer than the GPU tests, and with no file named pytest would collect the whole suite."""
    return sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text()
    )


def gpu_tests(dry_run: bool) -> dict:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *gpu_test_files()]
    # The dry run only collects them (without CUDA they skip).
    step = _run("gpu tests", [*command, "--collect-only"] if dry_run else command, timeout=240)
    last = [line for line in step["output"].splitlines() if line.strip()][-1:] or [""]
    return {**step, "summary": last[0].strip("= ")}


def train_throughput(sizes: dict, compiled: bool, dry_run: bool, out: Path) -> dict:
    command = [
        sys.executable, str(BENCHMARKS / "train_throughput.py"), "--device", "cpu" if dry_run else "cuda",
        "--model", sizes["model"], "--image-size", str(sizes["image_size"]),
        "--batch-size", str(sizes["batch_size"]), "--steps", str(sizes["steps"]), "--warmup", str(sizes["warmup"]),
        "--repeats", str(sizes["repeats"]), "--precision", "32-true" if dry_run else "bf16-mixed",
        "--channels-last", "--json", str(out),
    ]  # fmt: skip
    if dry_run:
        command += ["--num-classes", "10", "--threads", "1"]
    if compiled:
        command.append("--compile")
    env = {"TORCHDYNAMO_DISABLE": "1"} if dry_run and compiled else None
    step = _run(
        f"train {'compiled' if compiled else 'eager'}", command, timeout=90 if dry_run else 330, env=env
    )
    return {**step, "result": json.loads(out.read_text()) if out.is_file() else None}


def data_throughput(dry_run: bool, out: Path) -> dict:
    cores = os.cpu_count() or 1
    workers = [0, 1] if dry_run else sorted({0, max(1, cores // 2), cores})
    command = [
        sys.executable, str(BENCHMARKS / "data_throughput.py"), "--only", "jpeg-folder-224", "jpeg-folder-224-fast",
        "--workers", *map(str, workers), "--stages", "--json", str(out),
    ]  # fmt: skip
    if dry_run:
        command += [
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--batches",
            "1",
            "--stage-images",
            "4",
            "--rounds",
            "1",
        ]
    else:
        command += [
            "--batch-size",
            "64",
            "--warmup",
            "2",
            "--batches",
            "6",
            "--stage-images",
            "64",
            "--rounds",
            "3",
        ]
    step = _run("input pipeline", command, timeout=60 if dry_run else 180)
    return {**step, "result": json.loads(out.read_text()) if out.is_file() else None, "workers": workers}


def table(tests: dict, training: dict[str, dict], data: dict) -> list[str]:
    """The suite's one table, as lines."""
    rows = [f"{'measurement':<44}{'value':>24}", "-" * 68]
    rows.append(f"{'gpu-marked tests':<24}{tests['summary'][:44]:>44}")
    best = None
    for mode, step in training.items():
        result = step["result"] or {}
        for path in ("lightning", "bare", "timm"):
            rate = result.get(f"{path}_img_s")
            text = f"{rate:.1f}" if rate is not None else f"failed ({step['status']})"
            rows.append(f"{f'train img/s, {path}, {mode}':<44}{text:>24}")
            if path == "lightning" and rate is not None:
                best = max(best or 0.0, rate)
        if result.get("lightning_over_bare") is not None:  # the cost of the framework, as on the CPU
            rows.append(f"{f'train lightning / bare, {mode}':<44}{result['lightning_over_bare']:>24.3f}")
        memory = result.get("peak_memory_mib") or {}
        for path, mib in memory.items() if isinstance(memory, dict) else [("all paths", memory)]:
            rows.append(f"{f'peak memory MiB, {path}, {mode}':<44}{mib:>24.0f}")
    report = data["result"] or {}
    for item in report.get("results", []):
        label = f"{item['data']}, {item['workers']} workers, img/s"
        rows.append(f"{label:<44}{item['images_per_s']:>24.1f}")
    stages = report.get("stages")
    if stages:
        for name, total in (("recipe path", stages["old_total"]), ("fast path", stages["new_total"])):
            rows.append(f"{f'input {name}, img/s per core':<44}{1e3 / total:>24.1f}")
            if best:
                rows.append(f"{f'cores per GPU at {best:.0f} img/s, {name}':<44}{best * total / 1e3:>24.1f}")
        rows.append(f"{'input fast / recipe, per core':<44}{stages['ratio']:>23.2f}x")
        for name, ms in (stages.get("device_gpu") or {}).items():
            rows.append(f"{f'on the GPU, {name}, ms/img':<44}{ms:>24.4f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU: check the steps and table"
    )
    parser.add_argument("--json", type=Path, help="also write every step's results to this JSON file")
    args = parser.parse_args(argv)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a machine with a GPU, or pass --dry-run")
    sizes = DRY if args.dry_run else FULL
    start = time.perf_counter()
    if args.dry_run and hasattr(os, "fork"):
        global _launch
        for module in PRELOAD:
            importlib.import_module(module)
        _launch = _in_fork
    with tempfile.TemporaryDirectory() as tmp:
        tests = gpu_tests(args.dry_run)
        training = {
            mode: train_throughput(sizes, mode == "compiled", args.dry_run, Path(tmp) / f"train_{mode}.json")
            for mode in ("eager", "compiled")
        }
        data = data_throughput(args.dry_run, Path(tmp) / "data.json")
    lines = table(tests, training, data)
    setting = "DRY RUN (CPU, tiny sizes; numbers mean nothing)" if args.dry_run else "GPU"
    print(f"\ngpu suite, {setting}: {sizes['model']} {sizes['image_size']}px batch {sizes['batch_size']}, "
          f"{time.perf_counter() - start:.0f} s\n" + "\n".join(lines))  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        steps = {"tests": tests, "training": training, "data": data}
        for step in [tests, data, *training.values()]:
            step.pop("output", None)
        args.json.write_text(json.dumps({"sizes": sizes, "steps": steps, "table": lines}, indent=2) + "\n")
    failed = [s for s in [tests, data, *training.values()] if s["status"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
