"""Shards in object storage, against a real S3-compatible server started on 127.0.0.1 (moto's standalone server,
``tests/helpers/s3.py``): conversion into a bucket, training from it through ``main.py`` with a bounded cache, the
server going away mid-epoch, credentials that fail, and a shard replaced in the bucket. Exact resume from the
bucket under 2-process DDP: ``tests/training/test_resume_streaming.py``."""

import time
from pathlib import Path

import pytest
import torch
from helpers import CPU, EXPERIMENTS, QUIET, refused, run_main
from helpers.s3 import SECRET_KEY, S3Server, pid_file, s3_server

from convnext_pl.data.classification.synthetic_files import write_digits_folder
from convnext_pl.data.streaming import StreamingImageDataModule
from convnext_pl.data.streaming.__main__ import main as streaming_main
from convnext_pl.errors import UserError

SHARD_MB = 0.03  # ~40 digit PNGs per shard: a new shard every few batches of 16
# configs/experiment/digits_streaming.yaml on a bucket: 16 images a batch, windows of 32 samples, a cache of 0.5 MB
# (about 10 shards; the whole split is 1.1 MB).
DIGITS_FROM_S3 = [
    "--config", str(EXPERIMENTS / "digits_streaming.yaml"), *QUIET, *CPU,
    "--data.init_args.batch_size=16", "--data.init_args.shuffle_window=32",
    "--data.init_args.cache_limit_gb=0.0005",
]  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits") / "images")


def write_shards(digits: Path, server: S3Server, url: str = "s3://shards/digits") -> str:
    server.bucket(url.removeprefix("s3://").split("/")[0])
    streaming_main(["write", "--src", str(digits), "--out", url, "--shard-size-mb", str(SHARD_MB), "--no-progress",
                    "--workers", "2"])  # fmt: skip
    return url


def _cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*.tar"))


@pytest.mark.slow
def test_shards_written_to_s3_train_through_main_py_within_the_cache_bound_and_the_server_stopping_is_one_line(
    digits, s3, tmp_path
):
    url = write_shards(digits, s3)
    names = [o["Key"] for o in s3.client().list_objects_v2(Bucket="shards")["Contents"]]
    assert "digits/train/index.json" in names and sum(n.endswith(".tar") for n in names) > 20
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    command = ["fit", *DIGITS_FROM_S3, f"--data.init_args.root={url}", f"--data.init_args.cache_dir={cache}",
               "--trainer.max_epochs=1", "--trainer.limit_train_batches=12", "--trainer.limit_val_batches=2",
               "--checkpoint.every_n_train_steps=4", f"--trainer.default_root_dir={runs}"]  # fmt: skip
    # The server killed when step 9 begins: last.ckpt (step 8) is written, the next shards cannot be fetched.
    kill = ["--trainer.callbacks+=helpers.callbacks.KillProcessAtStep",
            f"--trainer.callbacks.pid_file={pid_file(tmp_path, s3)}", "--trainer.callbacks.step=9"]  # fmt: skip
    started = time.monotonic()
    result = run_main(command + kill, env=s3.env, timeout=240, check=False)
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert (
        last_line.startswith("error: cannot download s3://shards/digits/train/shard-")
        and "4 tries" in last_line
    )
    assert "--ckpt_path last" in last_line and took < 120
    checkpoint = torch.load(
        runs / "digits_streaming" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert checkpoint["global_step"] == 8  # intact, and what a resume starts from
    # Trained from the bucket through a bounded cache: shards were fetched, never more than the limit kept.
    assert 0 < _cache_bytes(cache) <= 0.0005 * 2**30
    assert SECRET_KEY not in result.stdout + result.stderr


def test_credentials_that_fail_are_one_line_naming_the_url_and_leave_no_run_folder(
    digits, monkeypatch, tmp_path, capsys
):
    with s3_server(monkeypatch, check_credentials=True):
        command = ["fit", *DIGITS_FROM_S3, "--data.init_args.root=s3://shards/digits",
                   f"--trainer.default_root_dir={tmp_path / 'runs'}"]  # fmt: skip
        message = refused(command, capsys, tmp_path / "runs")
        assert (
            "the credentials were refused for s3://shards/digits/train/index.json (InvalidAccessKeyId)"
            in message
        )
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        message = refused(command, capsys, tmp_path / "runs")
        assert message.startswith("error: no credentials for s3://shards/digits/train/index.json")


def test_a_shard_replaced_in_the_bucket_is_refused_before_it_is_used(digits, s3, tmp_path):
    url = write_shards(digits, s3)
    s3.client().put_object(Bucket="shards", Key="digits/train/shard-000000.tar", Body=b"x" * 1000)
    module = StreamingImageDataModule(url, num_classes=10, batch_size=16, num_workers=0, image_size=16,
                                      shuffle="global", cache_dir=str(tmp_path / "cache"))  # fmt: skip
    module.setup("fit")
    first = module.train_dataset.shard_samples()[0][0]
    with pytest.raises(
        UserError, match="shard-000000.tar does not match the size and SHA-256 its index records"
    ):
        module.train_dataset[first]
    assert _cache_bytes(tmp_path / "cache") < 2**20 and not list(
        (tmp_path / "cache").rglob("shard-000000.tar")
    )


def test_batches_from_the_bucket_equal_those_from_local_shards_whether_or_not_a_shard_was_fetched_first(
    digits, s3, tmp_path
):
    # boto3's transfers draw from python's random, which timm's crop draws from next: a fetch inside a sample's
    # seeded read must leave the generators as it found them (seeding.cpu_generators_untouched).
    url = write_shards(digits, s3)
    local = tmp_path / "local"
    streaming_main(["write", "--src", str(digits), "--out", str(local), "--shard-size-mb", str(SHARD_MB),
                    "--no-progress"])  # fmt: skip
    options = dict(num_classes=10, batch_size=16, num_workers=0, image_size=16, auto_augment=None, re_prob=0.0,
                   crop_scale=(0.5, 1.0), shuffle_window=48)  # fmt: skip

    def first_batches(root: str, **extra) -> list:
        module = StreamingImageDataModule(root, **options, **extra)
        module.setup("fit")
        return [batch for _, batch in zip(range(9), module.train_dataloader(), strict=False)]

    remote = first_batches(url, cache_dir=str(tmp_path / "cache"), cache_limit_gb=0.0005)
    for (a, y_a), (b, y_b) in zip(first_batches(str(local)), remote, strict=True):
        assert torch.equal(a, b) and torch.equal(y_a, y_b)
