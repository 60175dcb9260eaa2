"""A process that forks writers to be killed: the crash trials' subject.

Started once (``python crash_zygote.py``), it imports splitdataloader and then serves
requests, one JSON object per line on standard input: ``{"url", "log", "kill_at",
"delay"}``. For each it forks a child that runs :func:`write_plan` on ``url``; the child
kills itself with SIGKILL just before its ``kill_at``-th storage operation, or the zygote
kills it after ``delay`` seconds, or it finishes. The zygote answers with one JSON line,
``{"signal": n or null, "exitcode": n or null}``.

Forking from a process that has only imported the library costs a few milliseconds,
where starting Python and importing numpy and s3fs would cost most of a second: that is
what makes hundreds of kills affordable. The zygote itself never touches storage, so it
holds no threads or connections that a fork would copy.

The child logs every storage operation to ``log`` (``begin <op>`` and ``end <op>``, one
unbuffered ``os.write`` each), which tells the parent which commits had started or
finished when the kill came.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from splitdataloader import SplitDataLoader, SplitWriter, write_split_data
from splitdataloader import storage as storage_module
from splitdataloader import writables as writables_module

#: Records of each stage of the plan: (stage, count, size of each record).
STAGES = [("base", 20, 60), ("c1", 25, 900), ("c2", 30, 200), ("c3", 10, 3000), ("c4", 5, 50)]
BINS = 3


def stage_records(stage: str) -> list[bytes]:
    """The records of one stage: unique, and the same in every process."""
    for name, count, size in STAGES:
        if name == stage:
            return [
                b"%s:%04d:" % (name.encode(), k) + bytes([k % 251]) * size for k in range(count)
            ]
    raise KeyError(stage)


def states() -> list[list[bytes]]:
    """What the dataset holds after each commit of :func:`write_plan` (after ``base``)."""
    s0 = stage_records("base")
    s1 = s0 + stage_records("c1")
    s2 = s1 + stage_records("c2")
    s3 = stage_records("c3")
    s4 = s3 + stage_records("c4")
    return [s0, s1, s2, s3, s4]


def write_base(url: str) -> None:
    """The dataset the plan starts from (written by the parent, never killed)."""
    write_split_data(url, stage_records("base"), splits=BINS, start_clean=True)


#: Storage options of the plan's writers: on S3, one botocore session whose service
#: models the zygote loads before forking (each child would spend a second loading them).
OPTIONS: dict[str, Any] = {}


def write_plan(url: str) -> None:
    """Four commits: two appends by one writer (in segments of at most 2 KiB, so that
    each commit writes several files per bin), a replacement (``start_clean``) with
    another bin count, and an append by a new writer."""
    options = OPTIONS if url.startswith("s3://") else {}
    with SplitWriter(url, max_segment_bytes=2048, storage_options=options) as writer:
        writer.write_many(stage_records("c1"))
        writer.commit()
        writer.write_many(stage_records("c2"))
    write_split_data(url, stage_records("c3"), splits=2, start_clean=True, storage_options=options)
    write_split_data(url, stage_records("c4"), storage_options=options)


#: The operations that count as kill points: everything the writer asks of storage.
STORAGE_METHODS = [
    "open_writer",
    "close_writers",
    "commit_manifest",
    "replace_file",
    "remove",
    "makedirs",
    "sync_directories",
    "read_manifest",
    "list_names",
    "exists",
]
FILE_METHODS = ["write", "close", "discard"]


def instrument(log_fd: int, kill_at: int | None) -> Callable[[], int]:
    """Wrap the storage operations: log each, and SIGKILL this process at ``kill_at``."""
    count = [0]

    def wrap(owner: type, name: str) -> None:
        original = getattr(owner, name)
        label = f"{owner.__name__}.{name}"

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if kill_at is not None and count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            os.write(log_fd, f"begin {label}\n".encode())
            result = original(*args, **kwargs)
            os.write(log_fd, f"end {label}\n".encode())
            return result

        setattr(owner, name, wrapper)

    for method in STORAGE_METHODS:
        wrap(storage_module.Storage, method)
    for writer_class in (writables_module._LocalWriter, writables_module._FsspecWriter):
        for method in FILE_METHODS:
            wrap(writer_class, method)
    return lambda: count[0]


def child(request: dict[str, Any]) -> None:
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    operations = instrument(log_fd, request.get("kill_at"))
    write_plan(request["url"])
    os.write(log_fd, f"done {operations()}\n".encode())
    os.close(log_fd)


def warm_up() -> None:
    """Load what the first write loads (plugins, checksums), once, before any fork."""
    url = "memory://crash-zygote-warm-up"
    write_split_data(url, [b"warm"], splits=1)
    with SplitDataLoader(url) as loader:
        assert loader[0] == b"warm"
    from aiobotocore.session import AioSession  # noqa: PLC0415 - only for S3 trials

    session = AioSession()
    loader = session.get_component("data_loader")
    loader.load_service_model("s3", "service-2")
    loader.load_service_model("s3", "endpoint-rule-set-1")
    loader.load_data("endpoints")
    loader.load_data("partitions")
    loader.load_data("sdk-default-configuration")
    OPTIONS["session"] = session


def serve() -> None:
    warm_up()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(request)
            except BaseException as err:  # reported through the exit code and stderr
                sys.stderr.write(f"crash child failed: {err!r}\n")
                code = 3
            os._exit(code)
        delay = request.get("delay")
        if delay is not None:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.0005)
            else:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
        else:
            _, status = os.waitpid(pid, 0)
        answer = {
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exitcode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
