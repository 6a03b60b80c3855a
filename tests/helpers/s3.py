"""A real S3-compatible server for the streaming tests: moto's standalone server (``python -m moto.server``), a
process of its own listening on 127.0.0.1, reached over HTTP by boto3 exactly as AWS or MinIO would be."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

# What a child needs to reach the server: boto3's own variables (the code under test reads nothing else).
ACCESS_KEY = "convnext-pl-test-key"
SECRET_KEY = "convnext-pl-test-secret-do-not-log"
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """``python -m moto.server`` on a free port of 127.0.0.1.

    Args:
        check_credentials: refuse requests whose access key the server does not know (moto's IAM check), as AWS
            does; off, it takes any key.
    """

    def __init__(self, check_credentials: bool = False):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        server_env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto's S3 server did not listen on port {self.port} within {START_TIMEOUT_S} s")

    @property
    def env(self) -> dict[str, str]:
        """Variables a process needs to use the server (boto3's default chain and endpoint variable), with the
        user's config files hidden so that nothing of this machine's is read."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        env = self.env
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
        )  # fmt: skip

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@contextmanager
def s3_server(monkeypatch, check_credentials: bool = False) -> Iterator[S3Server]:
    """A started :class:`S3Server` whose variables are in this process's environment (``monkeypatch`` restores
    it), stopped when the block ends; the ``s3`` fixture is this with the defaults."""
    server = S3Server(check_credentials)
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        yield server
    finally:
        server.stop()


def pid_file(folder: Path, server: S3Server) -> Path:
    path = folder / "s3_server.pid"
    path.write_text(str(server.process.pid))
    return path
