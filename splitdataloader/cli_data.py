"""``splitdata`` commands that move records in and out: pack, unpack, get, head, cat, convert.

Each command parses its arguments, calls the library (:mod:`splitdataloader.pack`,
:mod:`splitdataloader.convert`, the loader) and prints; progress bars go to stderr and
records or results to stdout. Loaded by the console script only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from . import cli_options as common
from .convert import convert_legacy
from .errors import SampleFormatError
from .info import dataset_info
from .loader import SplitDataLoader
from .pack import METADATA_KEY, pack, unpack
from .samples import decode_sample
from .sources import KINDS, source_bytes

_SLICE = re.compile(r"(-?\d*):(-?\d*)(?::(-?\d+))?")
_BATCH = 512


@click.command(short_help="Pack files, lines, tar shards or a 0.0.1 folder into a dataset.")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.argument("dest", metavar="DEST")
@click.option(
    "--from",
    "kind",
    type=click.Choice(["auto", *KINDS]),
    default="auto",
    show_default=True,
    help="What the sources are; auto tells by name (folder, .jsonl, .txt, .tar, 0.0.1).",
)
@click.option(
    "--paths",
    is_flag=True,
    help="Folders: store each file's relative path with it, so unpack restores the tree.",
)
@click.option(
    "--names",
    is_flag=True,
    help="Store the records' names (paths, sample keys, file:line) as a JSON list in the dataset.",
)
@click.option("--append", "mode", flag_value="append", help="Add to an existing dataset.")
@click.option("--overwrite", "mode", flag_value="overwrite", help="Replace an existing dataset.")
@click.option("-b", "--bins", type=click.IntRange(min=1), help="Bins [default: 256, or kept].")
@common.codec_option
@click.option("--shuffle", is_flag=True, help="Send records to the bins in a random bin order.")
@click.option("--seed", type=int, help="Seed of --shuffle.")
@click.option("--checksum", type=click.Choice(["xxh3_64", "crc32"]), help="Record checksum.")
@click.option("--durable", is_flag=True, help="fsync before committing (local disk).")
@common.json_option
@common.common_options
def pack_command(
    *,
    sources: tuple[str, ...],
    dest: str,
    kind: str,
    paths: bool,
    names: bool,
    mode: str | None,
    bins: int | None,
    codecs: tuple[str, ...],
    shuffle: bool,
    seed: int | None,
    checksum: str | None,
    durable: bool,
    as_json: bool,
) -> None:
    """Pack SOURCE... into the dataset DEST, in one commit.

    A folder gives one record per file, JSON Lines and text files one record per line
    (.gz, .bz2, .xz too), tar files and WebDataset shards one record per sample (the
    members sharing a key, e.g. 000.jpg and 000.cls), a splitdataloader 0.0.1 folder its
    records. Sources may be local paths or URLs (s3://…); folders are local. If anything
    fails, or on Ctrl-C, nothing is committed.

    \b
    Examples:
      splitdata pack photos/ data/photos --paths
      splitdata pack corpus.jsonl.gz s3://bucket/corpus -b 64 -c zstd:level=9
      splitdata pack shards/*.tar s3://bucket/train --names
      splitdata pack more.jsonl data/corpus --append
    """
    config = common.settings()
    total = source_bytes(sources, kind)
    started = time.perf_counter()
    with common.bar("pack", total_bytes=total) as progress:
        report = pack(
            list(sources),
            dest,
            kind=kind,
            paths=paths,
            names=names,
            mode=mode or "create",
            bins=bins,
            codecs=common.codec_specs(codecs),
            key_providers=config.key_providers(),
            storage_options=config.storage_options(dest),
            source_options=config.storage_options(sources[0]),
            shuffle=shuffle,
            seed=seed,
            checksum=checksum,
            durable=durable,
            progress=progress,
        )
    seconds = time.perf_counter() - started
    if as_json:
        document = dict(vars(report))
        document.update(
            seconds=round(seconds, 6),
            records_per_s=round(report.records / seconds, 1) if seconds else 0.0,
            mb_per_s=round(report.source_bytes / 1e6 / seconds, 2) if seconds else 0.0,
        )
        common.emit_json(document)
        return
    click.echo(
        f"packed {report.records:,} records ({common.human_bytes(report.source_bytes)}) "
        f"from {len(sources)} source{'s' if len(sources) > 1 else ''} into {dest}: "
        f"records {report.first:,} to {report.first + report.records - 1:,} of "
        f"{report.total_records:,}, in {seconds:.2f} s "
        f"({common.rates(report.records, report.source_bytes, seconds)})"
        if report.records
        else f"packed no records into {dest} ({report.total_records:,} records)"
    )
    if report.names_file:
        click.echo(f"names stored in {report.names_file}")


@click.command(short_help="Write a dataset's records out as files (reverses pack).")
@click.argument("dest", metavar="DEST")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace files that exist in FOLDER.")
@common.json_option
@common.common_options
def unpack_command(*, dest: str, folder: Path, overwrite: bool, as_json: bool) -> None:
    """Write the records of DEST into FOLDER as files.

    Datasets packed from a folder with --paths (or from tar files) get their files back
    under their names; with --names, each record is named from the stored list; otherwise
    records are numbered.

    \b
    Examples:
      splitdata unpack data/photos restored/
      splitdata unpack s3://bucket/train shards-out/
    """
    config = common.settings()
    options = config.storage_options(dest)
    records = dataset_info(dest, storage_options=options, raw_sample=0).records
    started = time.perf_counter()
    with common.bar("unpack", total_records=records) as progress:
        report = unpack(
            dest,
            folder,
            storage_options=options,
            key_providers=config.key_providers(),
            overwrite=overwrite,
            progress=progress,
        )
    seconds = time.perf_counter() - started
    if as_json:
        common.emit_json({**vars(report), "seconds": round(seconds, 6)})
        return
    click.echo(
        f"wrote {report.files:,} files ({common.human_bytes(report.nbytes)}) from "
        f"{report.records:,} records into {folder} (named by {report.named_by})"
    )


# ---------------------------------------------------------------------------- reading


def _open(dest: str) -> SplitDataLoader:
    config = common.settings()
    return SplitDataLoader(
        dest,
        storage_options=config.storage_options(dest),
        key_providers=config.key_providers(),
    )


def _parse_indices(values: Sequence[str], length: int) -> list[int]:
    """``3``, ``-1``, ``10:20``, ``::100`` -> record indices (ranges clipped like slices)."""
    indices: list[int] = []
    for value in values:
        match = _SLICE.fullmatch(value.strip())
        if match is not None:
            start, stop, step = (int(g) if g else None for g in match.groups())
            if step == 0:
                raise click.BadParameter(f"{value!r}: a slice step cannot be 0")
            indices.extend(range(length)[slice(start, stop, step)])
            continue
        try:
            index = int(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not a record index (e.g. 3, -1) or a range (e.g. 10:20)",
                param_hint="INDEX",
            ) from None
        if not -length <= index < length:
            raise click.ClickException(
                f"record index {index} is out of range for {length:,} records"
            )
        indices.append(index % length)
    return indices


def _field(record: bytes, index: int, name: str | None) -> bytes:
    if name is None:
        return record
    sample = decode_sample(record, index)
    if name not in sample.fields:
        raise SampleFormatError(
            f"record {index} (sample {sample.key!r}) has no field {name!r}; it has "
            f"{', '.join(repr(f) for f in sample.fields)}",
            record=index,
        )
    return sample.fields[name]


def _write_records(
    records: Iterable[tuple[int, bytes]],
    *,
    as_json: bool,
    lines: bool,
    output_dir: Path | None,
    field_name: str | None,
    suffix: str = "",
) -> int:
    """Write records to stdout (raw, one per line, or JSON lines) or to files."""
    out = common.stdout_bytes()
    count = 0
    for index, record in records:
        data = _field(record, index, field_name)
        count += 1
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            name = f"{index}.{field_name}" if field_name else f"{index}{suffix}"
            (output_dir / name).write_bytes(data)
        elif as_json:
            out.write(json.dumps(common.record_json(index, data)).encode("utf-8") + b"\n")
        else:
            out.write(data)
            if lines:
                out.write(b"\n")
    out.flush()
    return count


def _output_options(function: Any) -> Any:
    for decorator in reversed(
        [
            click.option(
                "-o",
                "--output-dir",
                type=click.Path(file_okay=False, path_type=Path),
                help="Write each record to a file <index> in this folder instead.",
            ),
            click.option("-l", "--lines", is_flag=True, help="Write a newline after each record."),
            click.option(
                "--field",
                "field_name",
                metavar="NAME",
                help="Of sample records (tar/WebDataset packs), write only this field.",
            ),
            click.option(
                "--json",
                "as_json",
                is_flag=True,
                help="One JSON object per record: index, bytes, text (or base64).",
            ),
        ]
    ):
        function = decorator(function)
    return function


def _in_order(loader: SplitDataLoader, indices: Sequence[int]) -> Iterator[tuple[int, bytes]]:
    for chunk in common.batched(indices, _BATCH):
        yield from zip(chunk, loader.get_many(chunk))


@click.command(
    short_help="Write records by index to stdout or files.",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("dest", metavar="DEST")
@click.argument("indices", nargs=-1, required=True, metavar="INDEX...")
@_output_options
@common.common_options
def get_command(
    *,
    dest: str,
    indices: tuple[str, ...],
    output_dir: Path | None,
    lines: bool,
    field_name: str | None,
    as_json: bool,
) -> None:
    """Write records of DEST to stdout, as stored (decoded), back to back.

    INDEX is a record number (negative counts from the end) or a range START:STOP[:STEP].

    \b
    Examples:
      splitdata get data/photos 0 > first.jpg
      splitdata get data/corpus 10:20 -l
      splitdata get s3://bucket/train -1 --field jpg > last.jpg
      splitdata get data/corpus 0 5 --json
    """
    with _open(dest) as loader:
        wanted = _parse_indices(indices, len(loader))
        _write_records(
            _in_order(loader, wanted),
            as_json=as_json,
            lines=lines,
            output_dir=output_dir,
            field_name=field_name,
        )


@click.command(short_help="Show the first records of a dataset.")
@click.argument("dest", metavar="DEST")
@click.option("-n", "count", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--raw", is_flag=True, help="Write the records' bytes instead of a preview.")
@_output_options
@common.common_options
def head_command(
    *,
    dest: str,
    count: int,
    raw: bool,
    output_dir: Path | None,
    lines: bool,
    field_name: str | None,
    as_json: bool,
) -> None:
    """Show the first N records of DEST: index, size and the start of each.

    \b
    Examples:
      splitdata head data/corpus
      splitdata head s3://bucket/train -n 3 --json
    """
    with _open(dest) as loader:
        wanted = list(range(min(count, len(loader))))
        records = _in_order(loader, wanted)
        if raw or as_json or output_dir is not None or lines:
            _write_records(
                records,
                as_json=as_json,
                lines=lines,
                output_dir=output_dir,
                field_name=field_name,
            )
            return
        extra = loader.manifest.extra if loader.manifest is not None else {}
        metadata = extra.get(METADATA_KEY)
        samples = isinstance(metadata, dict) and metadata.get("records") == "sample"
        width = len(str(max(1, len(wanted) - 1)))
        for index, record in records:
            if samples and field_name is None:
                sample = decode_sample(record, index)
                parts = ", ".join(
                    f"{name or '(file)'}: {common.human_bytes(len(data))}"
                    for name, data in sample.fields.items()
                )
                click.echo(f"{index:>{width}}  {sample.key}  [{parts}]")
            else:
                data = _field(record, index, field_name)
                click.echo(
                    f"{index:>{width}}  {common.human_bytes(len(data)):>9}  {common.preview(data)}"
                )
        click.echo(f"({len(wanted):,} of {len(loader):,} records)", err=True)


@click.command(short_help="Write every record to stdout.")
@click.argument("dest", metavar="DEST")
@click.option(
    "--binwise",
    is_flag=True,
    help="In bin-wise order (fast, as training reads) instead of index order.",
)
@click.option("--shuffle", is_flag=True, help="With --binwise: shuffled, seeded by --seed.")
@click.option("--seed", type=int, default=0, show_default=True)
@_output_options
@common.common_options
def cat_command(
    *,
    dest: str,
    binwise: bool,
    shuffle: bool,
    seed: int,
    output_dir: Path | None,
    lines: bool,
    field_name: str | None,
    as_json: bool,
) -> None:
    """Write every record of DEST to stdout (or files), in index order.

    \b
    Examples:
      splitdata cat data/corpus -l > corpus.txt
      splitdata cat s3://bucket/corpus --json | jq .text
      splitdata cat data/corpus --binwise --shuffle --seed 3 -l
    """
    if shuffle and not binwise:
        raise click.UsageError("--shuffle goes with --binwise")
    with _open(dest) as loader, common.bar("cat", total_records=len(loader)) as progress:
        if binwise:
            records: Iterable[tuple[int, bytes]] = (
                (-1, record) for record in loader.iterate_binwise(shuffle=shuffle, seed=seed)
            )
        else:
            records = _in_order(loader, range(len(loader)))
        _write_records(
            _counted(records, progress),
            as_json=as_json,
            lines=lines,
            output_dir=output_dir,
            field_name=field_name,
        )


def _counted(
    records: Iterable[tuple[int, bytes]], progress: common.Bar
) -> Iterator[tuple[int, bytes]]:
    for number, (index, record) in enumerate(records):
        progress(1, len(record))
        yield (number if index < 0 else index), record


@click.command(short_help="Convert a splitdataloader 0.0.1 folder to format version 2.")
@click.argument("source", metavar="SOURCE")
@click.argument("dest", required=False, metavar="[DEST]")
@click.option("-b", "--bins", type=click.IntRange(min=1), help="Bins [default: as the source].")
@common.json_option
@common.common_options
def convert_command(*, source: str, dest: str | None, bins: int | None, as_json: bool) -> None:
    """Convert the 0.0.1 dataset SOURCE into a version-2 dataset at DEST (default: in place).

    Records keep their indices. In place, the 0.0.1 files are removed only after the new
    dataset is committed.

    \b
    Examples:
      splitdata convert old-data/
      splitdata convert old-data/ s3://bucket/data -b 64
    """
    config = common.settings()
    target = dest or source
    started = time.perf_counter()
    with common.bar("convert") as progress:
        count = convert_legacy(
            source,
            target,
            storage_options=config.storage_options(source),
            dest_storage_options=config.storage_options(target),
            bins=bins,
            start_clean=dest is None,
            progress=progress,
        )
    seconds = time.perf_counter() - started
    if as_json:
        common.emit_json(
            {"source": source, "dest": target, "records": count, "seconds": round(seconds, 6)}
        )
        return
    click.echo(f"converted {count:,} records from {source} into {target} in {seconds:.2f} s")
