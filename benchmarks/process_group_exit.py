"""How often a finished multi-process CPU run exits non-zero, with and without destroying its process group.

    python benchmarks/process_group_exit.py --repeats 30 --main-repeats 6 --load 2   # 15 min on 2 cores

The cause (issue 24): a process that leaves its gloo process group to the interpreter's exit can abort after its
work is done with ``terminate called without an active exception`` (SIGABRT, exit 134): gloo's C++ threads are
still running while the interpreter tears the group down (pytorch/pytorch#190489, and the abandoned
pytorch/pytorch#179291 that would have registered an ``atexit`` destroy). It is a race that shows on a loaded
machine, and rarely. The first part runs that issue's minimal program (5 gloo processes, one ``all_gather``,
exit) ``--repeats`` times as it is and as many times with ``destroy_process_group()`` before the exit, which
``convnext_pl.training.cli.cli_main`` does for every run (``end_process_group``). The second part runs
``main.py`` on 2 CPU processes (digits, DDP, 6 steps) ``--main-repeats`` times and counts the exit codes.
``--load N`` starts N busy processes beside the runs. Measured on the 2-core reference machine: beside the test
suite, 2 of 40 runs left to exit aborted with that line and 0 of 40 with the destroy; beside 2 busy processes,
0 of 30 either way, and 6 of 6 ``main.py`` runs exited 0.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORLD = 5  # pytorch/pytorch#190489's world size


def gloo_program(rank: int, destroy: bool, port: int) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    gathered = [torch.empty(1) for _ in range(WORLD)]
    dist.all_gather(gathered, torch.tensor([float(rank)]))
    if destroy:
        dist.destroy_process_group()


def _one_gloo_run(destroy: bool) -> tuple[int, bool]:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import torch.multiprocessing as mp; "
        "from process_group_exit import WORLD, gloo_program; "
        "mp.spawn(gloo_program, args=(sys.argv[2] == 'destroy', int(sys.argv[3])), nprocs=WORLD)"
    )
    mode = "destroy" if destroy else "keep"
    args = [sys.executable, "-c", code, str(Path(__file__).parent), mode, str(_free_port())]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    return done.returncode, "terminate called" in done.stderr


def _one_main_run(folder: Path) -> tuple[int, bool]:
    args = [sys.executable, "main.py", "fit", "--config", "configs/experiment/digits.yaml",
            "--config", "configs/trainer/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.precision", "32-true", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(folder)]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, "terminate called" in done.stderr


def _free_port() -> int:
    # Not tests/helpers/s3.free_port: this module is imported by each spawned process, which must stay light.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _busy() -> None:
    while True:
        pass


def _tally(results: list[tuple[int, bool]]) -> dict:
    return {
        "runs": len(results),
        "nonzero": sum(code != 0 for code, _ in results),
        "terminate_lines": sum(line for _, line in results),
        "exit_codes": dict(Counter(code for code, _ in results)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="runs of the gloo program, each way")
    parser.add_argument("--main-repeats", type=int, default=0, help="2-process main.py runs")
    parser.add_argument("--load", type=int, default=0, help="busy processes started beside the runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for process in busy:
        process.start()
    try:
        results = {}
        if args.repeats:
            for destroy in (False, True):
                runs = [_one_gloo_run(destroy) for _ in range(args.repeats)]
                results["gloo, destroy_process_group" if destroy else "gloo, left to exit"] = _tally(runs)
        if args.main_repeats:
            with tempfile.TemporaryDirectory() as folder:
                runs = [_one_main_run(Path(folder, str(i))) for i in range(args.main_repeats)]
            results["main.py, 2 processes (cli_main destroys)"] = _tally(runs)
    finally:
        for process in busy:
            process.terminate()

    print(f"{'program':<44} {'runs':>5} {'non-zero':>9} {'terminate lines':>16}  exit codes")
    for name, tally in results.items():
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(tally["exit_codes"].items()))
        print(f"{name:<44} {tally['runs']:>5} {tally['nonzero']:>9} {tally['terminate_lines']:>16}  {codes}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
