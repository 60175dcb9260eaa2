"""``splitdata`` commands that look after datasets: info, verify, cp, bench.

Each command parses its arguments, calls the library (:mod:`splitdataloader.info`,
:mod:`splitdataloader.verify`, :mod:`splitdataloader.repair`, :mod:`splitdataloader.cp`,
:mod:`splitdataloader.bench`) and prints: plain text for people, ``--json`` for scripts.
Loaded by the console script only.
"""

from __future__ import annotations

import time
from typing import Any

import click

from . import cli_options as common
from .bench import PHASES, benchmark
from .cp import DEFAULT_COMMIT_BYTES, copy_dataset
from .errors import UncommittedDatasetError
from .info import DatasetInfo, dataset_info
from .repair import DEFAULT_GRACE_PERIOD, RepairReport, repair
from .verify import VerifyReport, verify


@click.command(short_help="Show a dataset's size, layout, codecs and commits.")
@click.argument("dest", metavar="DEST")
@click.option(
    "--exact",
    is_flag=True,
    help="Decode every record for the exact size before encoding (else a sample).",
)
@click.option("--all-commits", is_flag=True, help="List every commit, not only the last 10.")
@common.json_option
@common.common_options
def info_command(*, dest: str, exact: bool, all_commits: bool, as_json: bool) -> None:
    """Describe the dataset DEST from its manifest.

    \b
    Examples:
      splitdata info data/photos
      splitdata info s3://bucket/train --json | jq .records
    """
    config = common.settings()
    info = dataset_info(
        dest,
        storage_options=config.storage_options(dest),
        key_providers=config.key_providers(),
        raw_sample=None if exact else 64,
    )
    if as_json:
        common.emit_json(info.to_json())
        return
    _print_info(info, all_commits)


def _chain(codecs: list[dict[str, Any]]) -> str:
    if not codecs:
        return "none (records stored as written)"
    parts = []
    for config in codecs:
        options = ", ".join(
            f"{k}={v}" for k, v in config.items() if k != "id" and not str(k).startswith("dict")
        )
        parts.append(f"{config['id']}({options})" if options else str(config["id"]))
    return " -> ".join(parts)


def _print_info(info: DatasetInfo, all_commits: bool) -> None:
    rows: list[tuple[str, str]] = [("dataset", info.url)]
    if info.format_version == 2:
        rows.append(
            ("format", f"version 2 (dataset id {info.dataset_id}, generation {info.generation})")
        )
    else:
        rows.append(("format", "splitdataloader 0.0.1 (read-only; splitdata convert)"))
    rows += [
        ("records", f"{info.records:,}"),
        ("bins", f"{info.bins:,}"),
        ("segments", f"{info.segments:,}"),
        ("stored", common.human_bytes(info.stored_bytes)),
    ]
    if info.raw_bytes is None:
        raw = "unknown (records could not be decoded; see notes)"
    else:
        how = "exact" if info.raw_exact else f"estimated from {info.raw_sample} records"
        ratio = info.stored_bytes / info.raw_bytes if info.raw_bytes else 0.0
        raw = f"{common.human_bytes(info.raw_bytes)} ({how}; stored/raw {ratio:.2f})"
    rows.append(("raw size", raw))
    if info.checksum:
        rows.append(("checksum", info.checksum))
    if info.format_version == 2:
        rows.append(("codecs", _chain(info.codecs)))
        rows.append(("key ids", ", ".join(info.key_ids) or "none"))
    packed = info.metadata.get("pack")
    if isinstance(packed, dict):
        named = sum(int(entry.get("records", 0)) for entry in packed.get("names", []))
        rows.append(
            ("packed", f"{packed.get('records', 'raw')} records, {named:,} with stored names")
        )
    origin = info.metadata.get("copied_from")
    if isinstance(origin, dict):
        rows.append(("copied from", str(origin.get("url"))))
    if info.format_version == 2:
        rows.append(("commits", f"{len(info.commits):,}"))
    for label, value in rows:
        click.echo(f"{label:<13}{value}")
    shown = info.commits if all_commits else info.commits[-10:]
    if shown:
        click.echo(
            f"\n  {'gen':>5}  {'created':<25}  {'records':>12}  {'bins':>6}  {'segments':>8}  "
            f"{'stored':>10}"
        )
        if len(shown) < len(info.commits):
            click.echo(f"  ({len(info.commits) - len(shown)} earlier commits; --all-commits)")
        for commit in shown:
            click.echo(
                f"  {commit.generation:>5}  {commit.created or '-':<25}  {commit.records:>12,}  "
                f"{commit.bins:>6}  {commit.segments:>8}  "
                f"{common.human_bytes(commit.stored_bytes):>10}"
            )
    for note in info.notes:
        click.echo(f"note: {note}", err=True)


@click.command(short_help="Check every checksum, frame and index entry; repair.")
@click.argument("dest", metavar="DEST")
@click.option(
    "--repair",
    "do_repair",
    is_flag=True,
    help="Rebuild lost or damaged index parts from the frames, and remove files no "
    "commit references (older than --grace).",
)
@click.option("--dry-run", is_flag=True, help="With --repair: say what would be done.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_PERIOD,
    show_default=True,
    metavar="SECONDS",
    help="With --repair: keep unreferenced files younger than this (a running writer's). "
    "Use 0 only when no writer is running.",
)
@click.option(
    "--decode/--no-decode",
    default=None,
    help="Also decode every record through the codecs [default: when keys are at hand].",
)
@click.option("--max-problems", type=click.IntRange(min=1), default=1000, show_default=True)
@common.json_option
@common.common_options
def verify_command(
    *,
    dest: str,
    do_repair: bool,
    dry_run: bool,
    grace: float,
    decode: bool | None,
    max_problems: int,
    as_json: bool,
) -> None:
    """Check every record of DEST: checksums, frames, index entries and counts.

    Exits with 1 and lists each bad record when anything is wrong. Files that no commit
    references (left by interrupted writes) are reported; --repair removes them and
    rebuilds index parts from the frames, which are self-delimiting. Damaged records
    themselves cannot be repaired: restore them from a copy.

    \b
    Examples:
      splitdata verify data/photos
      splitdata verify s3://bucket/train --json
      splitdata verify data/photos --repair --grace 0
    """
    if dry_run and not do_repair:
        raise click.UsageError("--dry-run goes with --repair")
    config = common.settings()
    options = config.storage_options(dest)
    try:
        total = dataset_info(dest, storage_options=options, raw_sample=0)
    except UncommittedDatasetError:
        if not do_repair:
            raise
        # Nothing was ever committed: every file is a leftover, which repair removes.
        leftovers = repair(dest, storage_options=options, dry_run=dry_run, grace_period=grace)
        if as_json:
            common.emit_json({"verify": None, "repair": leftovers.to_json()})
        else:
            _print_repair(leftovers)
        return
    with common.bar("verify", total_bytes=total.stored_bytes, total_records=total.records) as bar:
        report = verify(
            dest,
            storage_options=options,
            key_providers=config.key_providers(),
            decode=decode,
            max_problems=max_problems,
            progress=bar,
        )
    repaired: RepairReport | None = None
    if do_repair and (report.problems or report.unreferenced or report.unfinished_uploads):
        complete = report.problem_count == len(report.problems)
        with common.bar("repair") as bar:
            repaired = repair(
                dest,
                storage_options=options,
                dry_run=dry_run,
                grace_period=grace,
                # The check above named every damaged index part, unless it stopped
                # listing problems: then the repair looks for them itself.
                check_data=not complete,
                rebuild={p.file for p in report.problems if p.repairable},
                progress=bar,
            )
    if repaired is not None:
        # Damaged records that the check found and the repair did not look at again.
        for problem in report.problems:
            if not problem.repairable and problem not in repaired.unrepaired:
                repaired.unrepaired.append(problem)
    if as_json:
        document: dict[str, Any] = {"verify": report.to_json()}
        if do_repair:
            document["repair"] = repaired.to_json() if repaired is not None else None
        common.emit_json(document)
    else:
        _print_verify(report)
        if repaired is not None:
            _print_repair(repaired)
    repaired_now = repaired is not None and not repaired.dry_run
    if not (repaired.ok if repaired is not None and repaired_now else report.ok):
        click.get_current_context().exit(common.EXIT_PROBLEMS)


def _print_verify(report: VerifyReport) -> None:
    what = "0.0.1 dataset" if report.format_version == "0.0.1" else "dataset"
    decoded = ", every record decoded" if report.decoded else ""
    click.echo(
        f"checked {report.records_checked:,} of {report.records:,} records in "
        f"{report.files_checked:,} files ({common.human_bytes(report.bytes_checked)}) of the "
        f"{what} {report.url}{decoded}"
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.unreferenced:
        click.echo(
            f"{len(report.unreferenced):,} files no commit references (left by interrupted "
            f"writes, or a writer's in progress): --repair removes them"
        )
    if report.unfinished_uploads:
        click.echo(
            f"{len(report.unfinished_uploads):,} unfinished uploads (of writers that died, "
            f"or one still writing): --repair aborts them"
        )
    if report.ok:
        click.echo("ok: no problems")
        return
    click.echo(f"{report.problem_count:,} problems:")
    for problem in report.problems:
        fix = " [repairable]" if problem.repairable else ""
        click.echo(f"  BAD {problem}{fix}")
    if report.problem_count > len(report.problems):
        click.echo(f"  ... and {report.problem_count - len(report.problems):,} more")


def _print_repair(report: RepairReport) -> None:
    dry = report.dry_run
    rebuild, remove = ("would rebuild", "would remove") if dry else ("rebuilt", "removed")
    for rebuilt in report.rebuilt:
        target = f" as {rebuilt.new}" if rebuilt.new else ""
        click.echo(
            f"{rebuild} {rebuilt.old} from the frames of commit {rebuilt.commit} "
            f"({rebuilt.records:,} records){target}"
        )
    if report.removed:
        click.echo(f"{remove} {len(report.removed):,} unreferenced files")
    if report.aborted_uploads:
        abort = "would abort" if dry else "aborted"
        click.echo(f"{abort} {len(report.aborted_uploads):,} unfinished uploads")
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.unrepaired:
        click.echo(f"  NOT REPAIRED {problem}")
    if report.ok and not report.dry_run:
        click.echo("repaired: the dataset is consistent")


@click.command(short_help="Copy a dataset between URLs, optionally re-encoding it.")
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DEST")
@common.codec_option
@click.option("-b", "--bins", type=click.IntRange(min=1), help="Re-encode into this many bins.")
@click.option(
    "--reencode",
    is_flag=True,
    help="Re-encode even without new codecs or bins (rewrites every record).",
)
@click.option("--overwrite", is_flag=True, help="Replace another dataset at DEST.")
@click.option("--durable", is_flag=True, help="fsync before committing (local disk).")
@click.option(
    "--commit-mb",
    type=click.IntRange(min=1),
    default=DEFAULT_COMMIT_BYTES >> 20,
    show_default=True,
    help="When re-encoding, commit (a resume point) every this many MiB of records.",
)
@click.option(
    "--dest-option",
    "dest_assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="A storage option for DEST only (over -s). Repeatable.",
)
@common.json_option
@common.common_options
def cp_command(
    *,
    source: str,
    dest: str,
    codecs: tuple[str, ...],
    bins: int | None,
    reencode: bool,
    overwrite: bool,
    durable: bool,
    commit_mb: int,
    dest_assignments: tuple[str, ...],
    as_json: bool,
) -> None:
    """Copy the dataset SRC to DEST: any two URLs (local, s3://, ...).

    Without codecs or bins the files are copied byte for byte and the manifest last; a
    copy that stopped half-way resumes where it was, and a copy of an older generation is
    brought up to date. With --codec (--codec none stores records as written), --bins or
    --reencode, records are read and rewritten, committing every --commit-mb so that an
    interrupted copy resumes. A 0.0.1 SRC is converted on the way.

    \b
    Examples:
      splitdata cp data/photos s3://bucket/photos
      splitdata cp s3://bucket/photos data/photos-local
      splitdata cp data/corpus s3://bucket/corpus-z -c zstd:level=9 -b 64
      splitdata cp data/secure data/secure-2 -c aesgcm:key_id=team-b
    """
    config = common.settings()
    src_options = config.storage_options(source)
    dest_options = config.storage_options(dest, dest_assignments)
    total = dataset_info(source, storage_options=src_options, raw_sample=0)
    started = time.perf_counter()
    with common.bar("cp", total_bytes=None, total_records=total.records) as progress:
        report = copy_dataset(
            source,
            dest,
            storage_options=src_options,
            dest_storage_options=dest_options or {},
            codecs=common.codec_specs(codecs),
            bins=bins,
            reencode=True if reencode else None,
            key_providers=config.key_providers(),
            overwrite=overwrite,
            durable=durable,
            commit_bytes=commit_mb << 20,
            progress=progress,
        )
    seconds = time.perf_counter() - started
    if as_json:
        common.emit_json({**vars(report), "seconds": round(seconds, 6)})
        return
    if report.up_to_date:
        click.echo(f"{dest} is up to date with {source} ({report.records:,} records)")
        return
    if report.mode == "files":
        click.echo(
            f"copied {report.files_copied:,} files ({common.human_bytes(report.bytes_copied)}) "
            f"from {source} to {dest}, skipped {report.files_skipped:,} already there; "
            f"{report.records:,} records, in {seconds:.2f} s"
        )
    else:
        resumed = f", resumed after {report.resumed_from:,}" if report.resumed_from else ""
        click.echo(
            f"re-encoded {report.records_copied:,} records "
            f"({common.human_bytes(report.bytes_copied)}) from {source} into {dest}{resumed}; "
            f"{report.records:,} records, in {seconds:.2f} s "
            f"({common.rates(report.records_copied, report.bytes_copied, seconds)})"
        )


@click.command(short_help="Time random, batched, sequential and shuffled reads.")
@click.argument("dest", metavar="DEST")
@click.option(
    "--phases",
    default=",".join(PHASES),
    show_default=True,
    help="Which phases to run, comma-separated.",
)
@click.option("--random-reads", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--max-records",
    type=click.IntRange(min=1),
    help="Stop the sequential and shuffled passes after this many records.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip record checksums while reading.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Worker processes for the bin-wise passes.",
)
@common.json_option
@common.common_options
def bench_command(
    *,
    dest: str,
    phases: str,
    random_reads: int,
    batch_size: int,
    max_records: int | None,
    seed: int,
    no_verify: bool,
    workers: int,
    as_json: bool,
) -> None:
    """Time how fast DEST reads here: random access (loader[i]), random batches
    (get_many), a sequential and a shuffled pass (iterate_binwise).

    Records are checked and decoded as a training job gets them. Run it where the job
    will run, against where the data will live, to size hardware and settings.

    \b
    Examples:
      splitdata bench data/photos
      splitdata bench s3://bucket/train --max-records 100000 --workers 2 --json
    """
    config = common.settings()
    chosen = [name.strip() for name in phases.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PHASES]
    if unknown:
        raise click.BadParameter(
            f"unknown phases {', '.join(unknown)}; known: {', '.join(PHASES)}",
            param_hint="--phases",
        )
    bars: list[common.Bar] = []

    def start(name: str, records: int) -> common.Bar:
        if bars:
            bars[-1].close()
        bars.append(common.bar(name, total_records=records))
        return bars[-1]

    try:
        report = benchmark(
            dest,
            storage_options=config.storage_options(dest),
            key_providers=config.key_providers(),
            phases=chosen,
            random_reads=random_reads,
            batch_size=batch_size,
            max_records=max_records,
            seed=seed,
            verify=not no_verify,
            workers=workers,
            progress=start,
        )
    finally:
        if bars:
            bars[-1].close()
    if as_json:
        common.emit_json(report.to_json())
        return
    click.echo(
        f"{report.url}: {report.records:,} records in {report.bins} bins, opened in "
        f"{report.open_seconds * 1000:.1f} ms\n"
    )
    click.echo(f"{'phase':<12}{'records':>10}{'seconds':>10}{'records/s':>12}{'MB/s':>10}")
    for phase in report.phases:
        click.echo(
            f"{phase.name:<12}{phase.records:>10,}{phase.seconds:>10.3f}"
            f"{phase.records_per_second:>12,.0f}{phase.megabytes_per_second:>10.1f}"
        )
