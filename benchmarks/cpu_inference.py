"""Inference images/s on the CPU: eager PyTorch, TorchScript, ONNX Runtime and (opt-in) torch.compile.

    python benchmarks/cpu_inference.py --threads 1 --json runs/cpu_inference.json
    python benchmarks/cpu_inference.py --cases convnext_atto:32 --compile   # compiling takes minutes on a CPU

Each case is a randomly initialised network in eval mode (weights do not change the speed), exported with the
project's own ``convnext_pl.export.formats`` functions, fed the same batch. Every runtime is timed ``--batches`` times
after ``--warmup`` untimed calls, the runtimes interleaved for ``--rounds`` rounds; images/s is the median round.
The outputs are checked against eager's (max abs difference printed). ``--clock thread`` (with ``--threads 1``)
counts CPU seconds of the calling thread, where PyTorch, TorchScript and ONNX Runtime with one intra-op thread all
compute: on a machine shared with other jobs, wall time measures the neighbours as much as the runtime.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convnext_pl.export.formats import export_onnx, export_torchscript
from convnext_pl.models import create_model

DEFAULT_CASES = ("convnext_atto:32", "convnext_tiny:224")


def runtimes(net: torch.nn.Module, example: torch.Tensor, folder: Path, compile: bool) -> dict[str, Callable]:
    """Runtime name -> a function of a batch returning numpy logits."""
    import onnxruntime as ort

    # Traced at batch 2, as convnext_pl.export.formats does: torch.export specialises a batch of 1 and refuses the
    # dynamic batch axis, and the graphs then run at the timed batch size.
    traced_with = torch.randn(2, *example.shape[1:])
    export_torchscript(net, folder / "net.pt", traced_with)
    export_onnx(net, folder / "net.onnx", traced_with)
    scripted = torch.jit.load(str(folder / "net.pt"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(folder / "net.onnx"), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    found = {
        "eager": lambda x: net(x).numpy(),
        "torchscript": lambda x: scripted(x).numpy(),
        "onnxruntime": lambda x: session.run(None, {input_name: x.numpy()})[0],
    }
    if compile:
        compiled = torch.compile(net)
        found["compile"] = lambda x: compiled(x).numpy()
    return found


def _time(
    funcs: dict[str, Callable], example: torch.Tensor, warmup: int, batches: int, rounds: int, clock: Callable
):
    reference = funcs["eager"](example)
    errors, first_call_s = {}, {}
    for (
        runtime,
        fn,
    ) in funcs.items():  # the first call compiles (torch.compile's inductor: in worker processes)
        start = time.perf_counter()
        errors[runtime] = float(np.abs(fn(example) - reference).max())
        first_call_s[runtime] = time.perf_counter() - start
    start = time.perf_counter()
    for fn in funcs.values():
        for _ in range(warmup):
            fn(example)
    warmup_s = time.perf_counter() - start
    rates: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved, so a busy spell on a shared machine hits every runtime
        for runtime, fn in funcs.items():
            start = clock()
            for _ in range(batches):
                fn(example)
            rates.setdefault(runtime, []).append(batches * len(example) / (clock() - start))
    return rates, errors, first_call_s, warmup_s


def measure(
    case: str, batch_size: int, warmup: int, batches: int, rounds: int, compile: bool, clock: str = "wall"
) -> dict:
    name, size = case.split(":")
    net = create_model(name, num_classes=1000).eval()
    example = torch.randn(batch_size, 3, int(size), int(size))
    with tempfile.TemporaryDirectory() as tmp:
        funcs = runtimes(net, example, Path(tmp), compile)  # exporting traces: outside inference mode
        with torch.inference_mode():
            timer = time.thread_time if clock == "thread" else time.perf_counter
            rates, errors, first_call_s, warmup_s = _time(funcs, example, warmup, batches, rounds, timer)
    images_per_s = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "case": case,
        "batch_size": batch_size,
        "images_per_s": images_per_s,
        "over_eager": {k: v / images_per_s["eager"] for k, v in images_per_s.items()},
        "max_abs_difference": errors,
        "first_call_s": first_call_s,
        "warmup_s": warmup_s,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="model:image_size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling)")
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="images per wall-clock second, or per CPU second of the calling thread (needs --threads 1)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("--clock thread measures one CPU thread: use it with --threads 1")
    torch.set_num_threads(args.threads)
    results = []
    for case in args.cases:
        result = measure(
            case, args.batch_size, args.warmup, args.batches, args.rounds, args.compile, args.clock
        )
        results.append(result)
        cells = ", ".join(
            f"{k} {v:.1f} img/s ({result['over_eager'][k]:.2f}x, max diff {result['max_abs_difference'][k]:.1e}, "
            f"first call {result['first_call_s'][k]:.1f} s)"
            for k, v in result["images_per_s"].items()
        )
        print(
            f"{case} batch {args.batch_size}, {args.threads} thread(s), {args.clock} clock: {cells}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"threads": args.threads, "clock": args.clock, "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
