"""Shared test fixtures: CPU only, no network, deterministic seeds, GPU tests skipped without CUDA."""

import inspect
import os
from pathlib import Path

import pytest
import torch

# Tests must never reach a hub; timm and torchvision would otherwise try to download weights. huggingface_hub
# reads HF_HUB_OFFLINE once, when timm first imports it: so this comes before helpers (which import timm).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home-unused"))
# Under pytest-xdist (`make test`) there are as many workers as cores: one intra-op thread each (children and
# notebook kernels inherit OMP_NUM_THREADS), or the workers' OpenMP threads spin-wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from helpers import DIGITS, run_main  # noqa: E402  (after the environment above)

from convnext_pl.export.formats import export  # noqa: E402
from convnext_pl.training.cli import cli_main  # noqa: E402


def _shared_run_group(item) -> str | None:
    """The xdist group of a test that uses a shared run: a session- or module-scoped fixture of this suite that
    returns a value (a generator fixture such as ``one_torch_thread`` only sets something up). Its users go to one
    worker of `make test` (``--dist loadgroup``), so the run is made once; a fixture built on another
    (``digits_onnx`` on ``digits_ckpt``) groups with the one it builds on."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    shared = {}
    for name in item.fixturenames:
        definitions = info.name2fixturedefs.get(name)
        if not definitions:
            continue
        fixture = definitions[-1]
        tests_dir = str(Path(__file__).parent)
        if (
            fixture.scope in ("session", "module")
            and not inspect.isgeneratorfunction(fixture.func)
            and str(getattr(fixture.func, "__code__", None) and fixture.func.__code__.co_filename).startswith(
                tests_dir
            )
        ):
            shared[name] = fixture
    if not shared:
        return None
    used_by_others = {arg for fixture in shared.values() for arg in fixture.argnames}
    name = sorted(shared, key=lambda n: (n not in used_by_others, n))[0]
    return name if shared[name].scope == "session" else f"{item.module.__name__}::{name}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _shared_run_group(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory) -> Path:
    """last.ckpt of a three-step digits run with EMA (decay 0.5, so EMA and raw weights clearly differ) and a
    checkpoint every step: every piece of state the project adds to a checkpoint, trained once per session.

    Its users share one worker of `make test` (``_shared_run_group``), so it is trained once.
    """
    root = tmp_path_factory.mktemp("digits_run")
    run = [
        "fit",
        f"--config={DIGITS}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    ]
    steps = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    ema = ["--trainer.callbacks+=convnext_pl.training.callbacks.EMA", "--trainer.callbacks.decay=0.5"]
    cli = cli_main(run + steps + ema + ["--checkpoint.every_n_train_steps=1"])
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.fixture(scope="session")
def digits_onnx(digits_ckpt, tmp_path_factory) -> Path:
    """``digits_ckpt`` exported with ``python -m convnext_pl.export --format onnx`` (seconds), once per session.

    Its users go to ``digits_ckpt``'s worker (``_shared_run_group``).
    """
    return export(digits_ckpt, "onnx", tmp_path_factory.mktemp("digits_onnx") / "digits.onnx")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``python main.py fit --config configs/experiment/digits.yaml``, what `make demo` runs (12 epochs), once per
    session: ``(root, result)`` with the run's ``--trainer.default_root_dir`` and its ``CompletedProcess``.

    Its users share one worker of `make test` (``_shared_run_group``), so it is trained once.
    """
    root = tmp_path_factory.mktemp("demo")
    return root, run_main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(root)], timeout=600)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run the tests of a module with one intra-op thread and restore the count after them.

    The models of these tests are small: on a 2-core machine shared with other jobs, two OpenMP threads wait
    on each other and run 10-100x slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cifar_md5_bypass(monkeypatch):
    """Let torchvision's CIFAR read files generated by ``helpers.fakedata.write_cifar``.

    torchvision compares every CIFAR file's md5 with the real data set's, even with ``download=False``, so
    generated files read as "corrupted". The product keeps that check (it catches truncated downloads);
    tests switch it off: ``_check_integrity`` covers the batch files, the module's ``check_integrity`` the meta file.
    """
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: True)
