"""A real S3 protocol server on 127.0.0.1 for the tests: moto in server mode, as a subprocess.

:func:`start_moto` picks a free port, starts moto's server (through
:mod:`s3_moto_main`, which makes its conditional writes atomic) bound to the loopback
interface, waits until it answers, and returns a :class:`S3Server` whose
``stop`` ends it. Moto keeps objects in memory and copies a whole object on every GET,
ranged or not: tests keep their objects small.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: moto's server with atomic conditional writes (see that module).
MOTO_MAIN = Path(__file__).with_name("s3_moto_main.py")

#: Throwaway credentials the server accepts (moto accepts any).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class S3Server:
    """A running S3 protocol server and how to reach it."""

    process: subprocess.Popen[bytes]
    endpoint: str

    def environment(self) -> dict[str, str]:
        """Environment variables that point boto/s3fs clients at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def storage_options(self) -> dict[str, object]:
        """Explicit s3fs options for this server (no environment needed)."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": self.endpoint,
        }

    def create_bucket(self, name: str) -> None:
        import s3fs  # noqa: PLC0415 - the tests' S3 client

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())
        fs.mkdir(name)

    def reset(self) -> None:
        """Wipe every bucket and object."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto(timeout: float = 30.0) -> S3Server:
    """Start moto's S3 server on a free loopback port and wait until it answers."""
    port = free_port()
    environment = dict(os.environ)
    environment.pop("AWS_ENDPOINT_URL", None)
    process = subprocess.Popen(
        [sys.executable, str(MOTO_MAIN), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    server = S3Server(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the moto S3 server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/", timeout=2) as response:
                response.read()
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"the moto S3 server did not answer within {timeout} s"
                ) from None
            time.sleep(0.05)
