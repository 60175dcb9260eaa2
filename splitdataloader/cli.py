"""The ``splitdata`` command: a thin layer that parses options, calls the library and prints.

Output meant for people goes to stdout, progress bars go to stderr, and every failure ends
with one ``Error: ...`` line and a non-zero exit code. This module is loaded only by the
console script: ``import splitdataloader`` does not import it, so click and tqdm (the ``cli``
extra) are needed only here.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import click
    from tqdm import tqdm
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the splitdata command needs the `cli` extra: pip install 'splitdataloader[cli]'"
    ) from err

import xxhash

from splitdataloader import SplitDataLoader, SplitWriter
from splitdataloader.cli_admin import bench_command, cp_command, info_command, verify_command
from splitdataloader.cli_data import (
    cat_command,
    convert_command,
    get_command,
    head_command,
    pack_command,
    unpack_command,
)
from splitdataloader.cli_options import Group
from splitdataloader.errors import DatasetNotFoundError, SplitDataError
from splitdataloader.sources import find_files

__all__ = ["find_files", "main"]

#: Folders of the standard library's folder that hold installed packages, not the library.
_INSTALL_FOLDERS = ("site-packages", "dist-packages")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="splitdataloader")
def main() -> None:
    """Pack, inspect, check, copy and convert splitdataloader datasets.

    A dataset is a URL: a local path, s3://bucket/prefix, or any fsspec URL. Every command
    takes -s KEY=VALUE storage options (also from the environment variable
    SPLITDATA_STORAGE_OPTIONS, a JSON object, and from the config file
    ~/.config/splitdata/config.toml), --json for scripts, --progress/--no-progress and
    --debug. Errors print one line and exit with 1; Ctrl-C stops without committing
    anything half-done. `splitdata COMMAND --help` shows examples.

    \b
    A first hour:
      splitdata pack photos/ data/photos --paths     # one record per file
      splitdata info data/photos
      splitdata head data/photos -n 3
      splitdata verify data/photos
      splitdata cp data/photos s3://bucket/photos -c zstd
      splitdata bench s3://bucket/photos
    """


@dataclass
class _Phase:
    """Records and bytes handled in one phase, and the seconds spent in library calls."""

    records: int = 0
    nbytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "records": self.records,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 6),
            "records_per_s": round(self.records / self.seconds, 1) if self.seconds else 0.0,
            "mb_per_s": round(self.nbytes / 1e6 / self.seconds, 2) if self.seconds else 0.0,
        }


@dataclass(frozen=True)
class _Source:
    """What was written as one record: where it came from, its size and its digest."""

    name: str
    size: int
    digest: bytes


class _MismatchError(click.ClickException):
    """The dataset gave back something other than what was written."""


def _digest(data: bytes) -> bytes:
    # Independent of the library's own per-record checksum (xxh3_64 or crc32).
    return bytes(xxhash.xxh3_128_digest(data))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    return tqdm(
        total=total, desc=desc, unit="rec", file=sys.stderr, disable=not enabled, leave=True
    )


def _pack(
    files: list[Path], root: Path, dest: str, bins: int, show: bool
) -> tuple[list[_Source], _Phase]:
    phase = _Phase()
    written: dict[int, _Source] = {}
    clock = time.perf_counter
    with (
        _progress(len(files), "pack", show) as bar,
        SplitWriter(dest, bins=bins) as writer,
    ):
        for path in files:
            try:
                data = path.read_bytes()
            except OSError as err:
                raise click.ClickException(f"cannot read {path}: {err.strerror or err}") from err
            started = clock()
            index = writer.write(data)
            phase.seconds += clock() - started
            written[index] = _Source(path.relative_to(root).as_posix(), len(data), _digest(data))
            phase.records += 1
            phase.nbytes += len(data)
            bar.update(1)
        started = clock()
        total = writer.commit()
        phase.seconds += clock() - started
    if total != len(files):
        raise _MismatchError(f"the writer committed {total} records for {len(files)} files")
    if sorted(written) != list(range(len(files))):
        raise _MismatchError(f"the writer gave indices other than 0..{len(files) - 1}")
    return [written[i] for i in range(len(files))], phase


def _random_access(
    loader: SplitDataLoader, sources: list[_Source], seed: int, show: bool
) -> _Phase:
    phase = _Phase()
    order = list(range(len(sources)))
    random.Random(seed).shuffle(order)
    clock = time.perf_counter
    with _progress(len(order), "random access", show) as bar:
        for index in order:
            started = clock()
            data = loader[index]
            phase.seconds += clock() - started
            want = sources[index]
            if len(data) != want.size or _digest(data) != want.digest:
                how = (
                    f"read {len(data)} bytes, expected {want.size}"
                    if len(data) != want.size
                    else f"same size ({want.size} bytes), different bytes"
                )
                raise _MismatchError(
                    f"record {index} ({want.name}) does not match its source file: {how}"
                )
            phase.records += 1
            phase.nbytes += len(data)
            bar.update(1)
    return phase


def _epoch(loader: SplitDataLoader, sources: list[_Source], seed: int, show: bool) -> _Phase:
    phase = _Phase()
    digests: list[bytes] = []
    clock = time.perf_counter
    with _progress(len(sources), "shuffled epoch", show) as bar:
        records = loader.iterate_binwise(shuffle=True, seed=seed)
        while True:
            started = clock()
            data = next(records, None)
            phase.seconds += clock() - started
            if data is None:
                break
            digests.append(_digest(data))
            phase.records += 1
            phase.nbytes += len(data)
            bar.update(1)
    if sorted(digests) != sorted(s.digest for s in sources):
        missing = Counter(s.digest for s in sources)
        missing.subtract(digests)
        lost = [s.name for s in sources if missing[s.digest] > 0]
        extra = -sum(n for n in missing.values() if n < 0)
        example = f", e.g. {lost[0]}" if lost else ""
        raise _MismatchError(
            f"the shuffled epoch returned {len(digests)} records for {len(sources)} written: "
            f"{sum(n for n in missing.values() if n > 0)} missing{example}, {extra} unexpected"
        )
    return phase


def _check_empty(dest: str) -> None:
    try:
        SplitDataLoader(dest).close()
    except DatasetNotFoundError:
        return
    raise click.ClickException(f"{dest} already holds a dataset; give --dest an empty location")


@main.command(short_help="Pack files into a dataset and verify reading them back.")
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of files to pack [default: the standard library's folder, "
    "without its site-packages].",
)
@click.option(
    "--dest",
    metavar="URL",
    help="Where to write the dataset: a path or fsspec URL, kept afterwards "
    "[default: a new temporary folder].",
)
@click.option("--keep", is_flag=True, help="Keep the temporary dataset instead of removing it.")
@click.option(
    "--bins", type=click.IntRange(min=1), default=64, show_default=True, help="Number of bins."
)
@click.option("--limit", type=click.IntRange(min=1), help="Pack at most this many files.")
@click.option("--seed", type=int, help="Seed of the random orders [default: a random one].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress bars on stderr [default: when stderr is a terminal].",
)
def demo(
    *,
    source: Path | None,
    dest: str | None,
    keep: bool,
    bins: int,
    limit: int | None,
    seed: int | None,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Pack a folder of real files into a dataset, read it back and verify every record.

    Each file becomes one record. The dataset is then read twice: every record once, in a
    random order, through loader[i]; then one shuffled epoch through iterate_binwise.
    Both are checked against the source files. Rates count only the time spent in the
    library.
    """
    skip: list[Path] = []
    if source is None:
        source = Path(sysconfig.get_paths()["stdlib"])
        skip = [source / name for name in _INSTALL_FOLDERS]
    if seed is None:
        seed = secrets.randbelow(2**32)
    show = sys.stderr.isatty() if progress is None else progress

    files = find_files(source, limit=limit, skip=skip)
    if not files:
        raise click.ClickException(f"no regular files under {source}")
    temporary = dest is None
    target = tempfile.mkdtemp(prefix="splitdata-demo-") if dest is None else dest
    try:
        if not temporary:
            _check_empty(target)
        sources, pack = _pack(files, source, target, bins, show)
        started = time.perf_counter()
        with SplitDataLoader(target) as loader:
            opened = time.perf_counter() - started
            if len(loader) != len(sources):
                raise _MismatchError(
                    f"the dataset has {len(loader)} records for {len(sources)} files written"
                )
            access = _random_access(loader, sources, seed, show)
            access.seconds += opened
            epoch = _epoch(loader, sources, seed, show)
    except SplitDataError as err:
        raise click.ClickException(f"{type(err).__name__}: {err}") from err
    finally:
        if temporary and not keep:
            shutil.rmtree(target, ignore_errors=True)

    kept = not temporary or keep
    summary: dict[str, Any] = {
        "source": str(source),
        "dest": target,
        "dest_kept": kept,
        "bins": bins,
        "seed": seed,
        "files": len(sources),
        "bytes": pack.nbytes,
        "phases": {
            "pack": pack.as_dict(),
            "random_access": access.as_dict(),
            "epoch": epoch.as_dict(),
        },
        "verified": len(sources),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"packed {len(sources)} files ({pack.nbytes / 1e6:.1f} MB) from {source}\n"
        f"into {bins} bins at {target} ({'kept' if kept else 'removed'})\n"
    )
    click.echo(f"{'phase':<16}{'records':>9}{'seconds':>10}{'records/s':>12}{'MB/s':>10}")
    for name, phase in (("pack", pack), ("random access", access), ("shuffled epoch", epoch)):
        row = phase.as_dict()
        click.echo(
            f"{name:<16}{phase.records:>9}{phase.seconds:>10.3f}"
            f"{row['records_per_s']:>12,.0f}{row['mb_per_s']:>10.1f}"
        )
    click.echo(f"\nall {len(sources)} records verified (seed {seed})")


for _name, _command in (
    ("pack", pack_command),
    ("unpack", unpack_command),
    ("info", info_command),
    ("get", get_command),
    ("head", head_command),
    ("cat", cat_command),
    ("verify", verify_command),
    ("cp", cp_command),
    ("convert", convert_command),
    ("bench", bench_command),
):
    main.add_command(_command, _name)


if __name__ == "__main__":
    main()
