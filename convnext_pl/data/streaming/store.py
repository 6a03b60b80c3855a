"""Where shards live: a local folder or an ``s3://bucket/prefix`` URL, behind the four operations the writer and
the reader need (read a whole object, read a byte range, write an object, list/delete), with every failure a user
can fix turned into one sentence naming the URL.

Credentials come only from boto3's default chain (environment, ``~/.aws/config`` and ``credentials``, instance
roles) and the endpoint from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible servers; nothing
here logs either. boto3 is imported only when an ``s3://`` location is used (the ``streaming`` extra).
"""

import functools
import os
import shutil
from pathlib import Path

from convnext_pl.errors import UserError

# Retries with back-off for throttling and dropped connections, then one clear error: never an endless hang.
S3_RETRIES = 4
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60


def is_s3(location: str) -> bool:
    return str(location).startswith("s3://")


def join(location: str, name: str) -> str:
    return f"{str(location).rstrip('/')}/{name}"


def open_store(location: str) -> "Store":
    """The process's :class:`Store` of ``location`` for the converter, which would otherwise build one per shard:
    a boto3 client takes ~0.3 s to build (it loads the service model). Keyed by process id as well: a forked
    worker must not share its parent's connections. The converter clears it when it starts (credentials and
    endpoint are read when a client is built)."""
    return _store_of_process(str(location), os.getpid())


@functools.cache
def _store_of_process(location: str, pid: int) -> "Store":
    return Store(location)


def forget_stores() -> None:
    """Drop the stores :func:`open_store` keeps, so that the next ones read the environment again."""
    _store_of_process.cache_clear()


class Store:
    """A local folder or S3 prefix. Args: location: ``/path`` or ``s3://bucket/prefix``."""

    def __init__(self, location: str):
        self.location = str(location).rstrip("/")
        self._client = None
        if is_s3(self.location):
            bucket, _, prefix = self.location.removeprefix("s3://").partition("/")
            if not bucket:
                raise UserError(f"{location} names no bucket; write s3://<bucket>/<prefix>")
            self.bucket, self.prefix = bucket, prefix

    # -- S3 plumbing -------------------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:  # built lazily, once per process (DataLoader workers build their own)
            try:
                import boto3
                from botocore.config import Config
            except ImportError as err:
                raise UserError(
                    f"reading {self.location} needs boto3; pip install 'convnext-pl[streaming]'"
                ) from err
            config = Config(
                retries={"max_attempts": S3_RETRIES, "mode": "standard"},
                connect_timeout=S3_CONNECT_TIMEOUT_S,
                read_timeout=S3_READ_TIMEOUT_S,
            )
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name

    def _s3(self, action: str, name: str, call, **kwargs):
        """``call(**kwargs)``, with the errors a user can fix as one sentence naming the object's URL."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        url = join(self.location, name)
        try:
            return call(**kwargs)
        except NoCredentialsError:
            raise UserError(
                f"no credentials for {url}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from None
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(url) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                raise UserError(
                    f"the credentials were refused for {url} ({code}); check AWS_PROFILE or the AWS_* variables"
                ) from None
            if code == "NoSuchBucket":
                raise UserError(f"the bucket of {url} does not exist; create it or fix the URL") from None
            raise UserError(f"cannot {action} {url} ({code}); check the URL and try again") from None
        except BotoCoreError as err:  # endpoint unreachable or connection dropped, after the retries
            raise UserError(
                f"cannot {action} {url} after {S3_RETRIES} tries ({type(err).__name__}); check the endpoint and "
                "network, then run the same command again (training: add --ckpt_path last)"
            ) from None

    # -- the operations ----------------------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """The whole object. Raises FileNotFoundError when it does not exist."""
        if not is_s3(self.location):
            return Path(join(self.location, name)).read_bytes()
        response = self._s3("read", name, self.client.get_object, Bucket=self.bucket, Key=self._key(name))
        return self._s3("read", name, response["Body"].read)

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (an HTTP range request on S3)."""
        if not is_s3(self.location):
            with open(join(self.location, name), "rb") as f:
                return os.pread(f.fileno(), size, offset)
        byte_range = f"bytes={offset}-{offset + size - 1}"
        response = self._s3("read", name, self.client.get_object, Bucket=self.bucket, Key=self._key(name),
                            Range=byte_range)  # fmt: skip
        return self._s3("read", name, response["Body"].read)

    def download(self, name: str, path: Path) -> None:
        """Copy the object to the local ``path`` (the caller checks and renames it)."""
        if not is_s3(self.location):
            shutil.copyfile(join(self.location, name), path)
            return
        self._s3("download", name, self.client.download_file, Bucket=self.bucket, Key=self._key(name),
                 Filename=str(path))  # fmt: skip

    def upload(self, path: Path, name: str, metadata: dict[str, str] | None = None) -> None:
        """Put a local file under ``name``. On S3 the object appears only once complete; locally it is renamed
        into place after the copy, so a reader never sees half a file."""
        if not is_s3(self.location):
            target = Path(join(self.location, name))
            target.parent.mkdir(parents=True, exist_ok=True)
            if Path(path) != target:
                shutil.copyfile(path, target.with_name(target.name + ".part"))
                os.replace(target.with_name(target.name + ".part"), target)
            return
        extra = {"ExtraArgs": {"Metadata": metadata}} if metadata else {}
        self._s3("write", name, self.client.upload_file, Filename=str(path), Bucket=self.bucket,
                 Key=self._key(name), **extra)  # fmt: skip

    def write(self, name: str, data: bytes) -> None:
        if not is_s3(self.location):
            target = Path(join(self.location, name))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.with_name(target.name + ".part").write_bytes(data)
            os.replace(target.with_name(target.name + ".part"), target)
            return
        self._s3("write", name, self.client.put_object, Bucket=self.bucket, Key=self._key(name), Body=data)

    def size_and_metadata(self, name: str) -> tuple[int, dict[str, str]] | None:
        """``(bytes, metadata)`` of an object, or None when it does not exist."""
        if not is_s3(self.location):
            path = Path(join(self.location, name))
            return (path.stat().st_size, {}) if path.is_file() else None
        try:
            head = self._s3("read", name, self.client.head_object, Bucket=self.bucket, Key=self._key(name))
        except FileNotFoundError:
            return None
        return head["ContentLength"], head.get("Metadata", {})

    def names(self) -> list[str]:
        """Names of every object under the location (relative to it)."""
        if not is_s3(self.location):
            root = Path(self.location)
            if not root.is_dir():
                return []
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._key("") if self.prefix else ""
        pages = self._s3("list", "", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        return sorted(obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", []))

    def delete_all(self) -> None:
        if not is_s3(self.location):
            shutil.rmtree(self.location, ignore_errors=True)
            return
        for name in self.names():
            self._s3("delete", name, self.client.delete_object, Bucket=self.bucket, Key=self._key(name))
