"""Writing Dask collections on a real ``distributed.LocalCluster`` of worker processes.

One cluster of two worker processes serves the whole module. Records are made inside
the workers and carry the id of the process that made them, so the tests see that the
parts were written there; the datasets go to local disk and to the session's S3 server
(the workers inherit its endpoint and credentials from the environment).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from conftest import S3_BUCKET
from distributed import Client, LocalCluster
from reference_model import read_all, to_fs

from splitdataloader import SplitDataLoader, list_parts, write_dask, write_split_data
from splitdataloader.errors import CodecConfigError

README = Path(__file__).resolve().parent.parent / "README.md"
PARTITIONS = 6


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(params=["local", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "ds")
    request.getfixturevalue("s3_server")
    return f"s3://{S3_BUCKET}/dask-{uuid.uuid4().hex}/ds"


def made_in_worker(numbers: Iterable[int]) -> Iterator[bytes]:
    """Records of the partitions ``numbers``: partition 3 is empty, the others vary."""
    pid = os.getpid()
    for number in numbers:
        for k in range(0 if number == 3 else 40 + 17 * number):
            yield f"{number}:{k}:{pid}:".encode().ljust(64, b".")


def parse(record: bytes) -> tuple[int, int, int]:
    number, k, pid = record.split(b":")[:3]
    return int(number), int(k), int(pid)


def stored(url: str) -> set[str]:
    fs, root = to_fs(url)
    fs.invalidate_cache()
    return {path[len(root) + 1 :] for path in fs.find(root)}


def test_bag_made_in_the_workers_reads_in_partition_order(client: Client, url: str) -> None:
    bag = db.from_sequence(range(PARTITIONS), npartitions=PARTITIONS).map_partitions(made_in_worker)

    written = write_dask(bag, url, bins=8)

    loader = SplitDataLoader(url)
    records = read_all(loader)
    assert written == len(loader) == sum(40 + 17 * n for n in range(PARTITIONS) if n != 3)
    keys = [parse(record)[:2] for record in records]
    assert keys == [(n, k) for n in range(PARTITIONS) if n != 3 for k in range(40 + 17 * n)]
    writers = {parse(record)[2] for record in records}
    workers = set(client.run(os.getpid).values())
    assert writers <= workers
    assert os.getpid() not in writers
    assert sorted(loader.iterate_binwise(shuffle=True, seed=1)) == sorted(records)
    assert list_parts(url) == []
    fs, root = to_fs(url)
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    listed = {c["index"]["name"] for c in manifest["commits"]}
    listed.update(s["name"] for c in manifest["commits"] for s in c["segments"])
    assert {f for f in stored(url) if f != "manifest.json"} == listed


def test_each_bag_partition_is_written_by_the_task_that_makes_it(tmp_path: Path) -> None:
    """Fused: records stream into the writer, and a partition that is a generator (which
    cannot be pickled) never has to travel to another worker."""
    from splitdataloader.dask import _partition_tasks, _PartSpec  # noqa: PLC0415 - internals

    bag = db.from_sequence(range(PARTITIONS), npartitions=PARTITIONS).map_partitions(made_in_worker)
    tasks, count = _partition_tasks(dask, bag, _PartSpec(str(tmp_path)), "run")
    (optimized,) = dask.optimize(tasks)
    (alone,) = dask.optimize(bag)
    assert count == PARTITIONS
    assert len(dict(optimized.__dask_graph__())) == len(dict(alone.__dask_graph__()))
    assert len(dict(optimized.__dask_graph__())) < len(dict(tasks.__dask_graph__()))


def test_appends_after_existing_records_with_the_datasets_codecs(
    client: Client, tmp_path: Path
) -> None:
    url = str(tmp_path / "ds")
    first = [b"existing %d" % k for k in range(10)]
    write_split_data(url, first, splits=4, codecs=["zlib"])
    bag = db.from_sequence([b"new %d" % k for k in range(25)], npartitions=3)

    assert write_dask(bag, url) == 25

    assert read_all(SplitDataLoader(url)) == first + [b"new %d" % k for k in range(25)]


def test_delayed_partitions_and_array_blocks(client: Client, tmp_path: Path) -> None:
    parts = [
        dask.delayed(lambda n: [b"d%d-%d" % (n, k) for k in range(n + 2)])(n) for n in range(3)
    ]
    assert write_dask(parts, tmp_path / "delayed", bins=2) == 2 + 3 + 4
    assert read_all(SplitDataLoader(tmp_path / "delayed")) == [
        b"d%d-%d" % (n, k) for n in range(3) for k in range(n + 2)
    ]

    rows = np.arange(10 * 16, dtype=np.uint8).reshape(10, 16)
    assert write_dask(da.from_array(rows, chunks=(3, 16)), tmp_path / "array", bins=3) == 10
    assert read_all(SplitDataLoader(tmp_path / "array")) == [row.tobytes() for row in rows]
    with pytest.raises(ValueError, match="rechunk"):
        write_dask(da.from_array(rows, chunks=(3, 8)), tmp_path / "split-rows")


def fail_last(numbers: Iterable[int], url: str) -> Iterator[bytes]:
    """Partition 0 raises once partition 1 has recorded its part (or after 30 s)."""
    for number in numbers:
        if number == 0:
            yield b"partial"
            for _ in range(300):
                if list_parts(url):
                    break
                time.sleep(0.1)
            raise ValueError("the source of partition 0 failed")
        yield b"fine %d" % number


def test_a_failing_partition_leaves_no_part_and_no_dataset(client: Client, url: str) -> None:
    bag = db.from_sequence(range(2), npartitions=2).map_partitions(fail_last, url)
    with pytest.raises(ValueError, match="partition 0 failed"):
        write_dask(bag, url, bins=4)
    assert list_parts(url) == []
    assert not {f for f in stored(url) if f.startswith(("data/", "index/", "manifest"))}


def test_settings_no_part_could_be_joined_with_fail_before_any_task(
    client: Client, tmp_path: Path
) -> None:
    bag = db.from_sequence([b"x"] * 10, npartitions=2)
    url = tmp_path / "ds"
    with pytest.raises(CodecConfigError, match="trains"):
        write_dask(bag, url, codecs=[{"id": "zstd", "dictionary": True}])
    with pytest.raises(CodecConfigError, match="aesgcm"):
        write_dask(bag, url, codecs=[{"id": "aesgcm", "key_id": "k"}])
    with pytest.raises(TypeError, match="Dask bag"):
        write_dask([b"not", b"dask"], url)
    with pytest.raises(ValueError, match="no partitions"):
        write_dask([], url)
    assert not url.exists() or not any(url.rglob("*.seg"))


def test_local_writes_survive_a_profiler_that_keeps_frames(tmp_path: Path) -> None:
    """Dask's workers sample their stacks; a kept frame must not pin the writer's buffers."""
    kept: list[object] = []

    def keep_write_frames(frame: FrameType, event: str, arg: object) -> None:
        if event == "return" and frame.f_code.co_name == "write":
            kept.append(frame)

    sys.setprofile(keep_write_frames)
    try:
        write_split_data(tmp_path / "ds", (bytes(1000) for _ in range(3000)), splits=2)
    finally:
        sys.setprofile(None)
    assert kept  # the profiler saw the segment writes
    assert len(SplitDataLoader(tmp_path / "ds")) == 3000


def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("### Writing in parallel", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's parallel writing section has no Python example"
    return match.group(1)


# The example's cluster asks for the default dashboard port; when another cluster on this
# machine holds it, tornado's bind_sockets raises without closing its socket, which is
# collected later as an unraisable ResourceWarning, and Dask takes another port.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_readme_example_runs(tmp_path: Path) -> None:
    code = readme_example()
    assert "s3://datasets/train" in code
    url = str(tmp_path / "train")  # the S3 path of this module's other tests is the same
    namespace: dict[str, object] = {"__name__": "readme_example"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        exec(code.replace("s3://datasets/train", url), namespace)
    loader = SplitDataLoader(url)
    assert len(loader) == namespace["written"]
    assert len(loader) > 0
    assert sorted(loader.iterate_binwise()) == sorted(read_all(loader))
