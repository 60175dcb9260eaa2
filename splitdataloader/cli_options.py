"""What every ``splitdata`` command shares: settings, progress bars, output and errors.

Owns how storage options and keys are found (flags over the ``SPLITDATA_STORAGE_OPTIONS``
environment variable over the config file), codec specs written on the command line, the
progress bars drawn on stderr, JSON and byte output, and the translation of any failure
into one ``Error:`` line and an exit code. Loaded by the console script only; the library
never imports it.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from tqdm import tqdm

from .errors import SplitDataError

if TYPE_CHECKING:
    from .keys import KeyProvider

#: Environment variable: storage options (a JSON object) for every URL.
STORAGE_OPTIONS_ENV = "SPLITDATA_STORAGE_OPTIONS"
#: Environment variable: the config file to read.
CONFIG_ENV = "SPLITDATA_CONFIG"
#: Environment variable: show tracebacks (as ``--debug``).
DEBUG_ENV = "SPLITDATA_DEBUG"
#: Exit codes.
EXIT_PROBLEMS = 1
EXIT_INTERRUPTED = 130

_META = "splitdata.settings"
F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------- settings


def default_config_path() -> Path:
    """``$SPLITDATA_CONFIG``, else ``$XDG_CONFIG_HOME/splitdata/config.toml`` (``~/.config``)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "splitdata" / "config.toml"


def _merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``into`` updated with ``more``, nested dicts merged key by key."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = _merge(dict(into[key]), value)
        else:
            into[key] = value
    return into


def parse_assignment(text: str, what: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` -> (``["a", "b"]``, value); the value is JSON if it parses, else text."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint=what)
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip().split("."), parsed


def _nested(path: list[str], value: Any) -> dict[str, Any]:
    result: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        result = {key: result}
    return result


@dataclass
class Settings:
    """What the common options and the environment say, resolved per URL on demand."""

    assignments: list[str] = field(default_factory=list)
    config: Path | None = None
    key_files: list[str] = field(default_factory=list)
    progress: bool | None = None
    debug: bool = False
    _config: dict[str, Any] | None = None

    def config_document(self) -> dict[str, Any]:
        """The config file's contents (empty when there is none)."""
        if self._config is not None:
            return self._config
        path = self.config or default_config_path()
        if not path.is_file():
            if self.config is not None or os.environ.get(CONFIG_ENV):
                raise click.ClickException(f"config file {path} does not exist")
            self._config = {}
            return self._config
        toml = _toml_module()
        try:
            with path.open("rb") as handle:
                document: dict[str, Any] = toml.load(handle)
        except (OSError, ValueError) as err:
            raise click.ClickException(f"config file {path} cannot be read: {err}") from None
        storage = document.get("storage", {})
        if not isinstance(storage, dict) or not all(isinstance(v, dict) for v in storage.values()):
            raise click.ClickException(
                f'config file {path}: [storage."<url prefix>"] tables must hold options'
            )
        self._config = document
        return document

    def storage_options(self, url: str, extra: Sequence[str] = ()) -> dict[str, Any] | None:
        """Storage options for ``url``: config-file tables whose prefix it starts with
        (shortest first, ``"*"`` matching every URL), then the environment variable, then
        ``-s`` flags, then ``extra`` assignments."""
        options: dict[str, Any] = {}
        tables = self.config_document().get("storage", {})
        for prefix in sorted(tables, key=lambda p: (p != "*", len(p))):
            if prefix == "*" or url.startswith(prefix):
                _merge(options, tables[prefix])
        from_env = os.environ.get(STORAGE_OPTIONS_ENV)
        if from_env:
            try:
                document = json.loads(from_env)
            except ValueError as err:
                raise click.ClickException(f"{STORAGE_OPTIONS_ENV} is not JSON: {err}") from None
            if not isinstance(document, dict):
                raise click.ClickException(f"{STORAGE_OPTIONS_ENV} must be a JSON object")
            _merge(options, document)
        for text in (*self.assignments, *extra):
            path, value = parse_assignment(text, "--storage-option")
            _merge(options, _nested(path, value))
        return options or None

    def key_providers(self) -> list[KeyProvider] | None:
        """Key files first (``--key-file`` and the config's ``[keys] files``), then every
        registered key provider; ``None`` (the library's default) when there are no files."""
        configured = self.config_document().get("keys", {}).get("files", [])
        files = [*self.key_files, *(str(Path(str(f)).expanduser()) for f in configured)]
        if not files:
            return None
        from .plugins import key_provider_class, registered_key_providers  # noqa: PLC0415

        providers: list[KeyProvider] = [key_provider_class("file")(path=f) for f in files]
        for provider_id in registered_key_providers():
            try:
                providers.append(key_provider_class(provider_id)())
            except ImportError:
                continue
        return providers

    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else self.progress


def _toml_module() -> Any:
    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - Python 3.10 without the cli extra
        raise click.ClickException(
            "reading the config file needs tomli on Python 3.10: pip install 'splitdataloader[cli]'"
        ) from None


def settings() -> Settings:
    """The current command's settings."""
    context = click.get_current_context()
    found: Settings = context.meta.setdefault(_META, Settings())
    return found


def _store(attribute: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        target: Settings = ctx.meta.setdefault(_META, Settings())
        if isinstance(value, tuple):
            getattr(target, attribute).extend(value)
        elif value is not None:
            setattr(target, attribute, value)

    return callback


def common_options(function: F) -> F:
    """Storage options, keys, config file, progress and debug flags for a command."""
    decorators = [
        click.option(
            "-s",
            "--storage-option",
            "assignments",
            multiple=True,
            metavar="KEY=VALUE",
            expose_value=False,
            callback=_store("assignments"),
            help="A storage option for fsspec, e.g. endpoint_url=http://localhost:9000 or "
            "anon=true (VALUE is parsed as JSON when it can be; a.b=1 nests). Repeatable.",
        ),
        click.option(
            "--key-file",
            "key_files",
            multiple=True,
            metavar="PATH",
            expose_value=False,
            callback=_store("key_files"),
            help="A key file, or a folder of <key id>.key files, for encrypted datasets. "
            "Repeatable. Keys also come from SPLITDATALOADER_KEY_<ID> variables.",
        ),
        click.option(
            "--config",
            type=click.Path(dir_okay=False, path_type=Path),
            expose_value=False,
            callback=_store("config"),
            help=f"Config file [default: ${CONFIG_ENV} or ~/.config/splitdata/config.toml].",
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            expose_value=False,
            callback=_store("progress"),
            help="Progress bars on stderr [default: when stderr is a terminal].",
        ),
        click.option(
            "--debug",
            is_flag=True,
            expose_value=False,
            callback=_store("debug"),
            help=f"Show the traceback of an error (or set {DEBUG_ENV}=1).",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def json_option(function: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON, for scripts."
    )(function)


# ---------------------------------------------------------------------------- codecs


def parse_codec(text: str) -> dict[str, Any] | str:
    """A codec spec from the command line: ``zstd``, ``zstd:level=9,dictionary=true``,
    ``aesgcm:key_id=team-a``, or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as err:
            raise click.BadParameter(f"{text!r} is not JSON: {err}", param_hint="--codec") from None
        if not isinstance(document, dict):
            raise click.BadParameter(f"{text!r} is not a JSON object", param_hint="--codec")
        return document
    codec_id, _, rest = text.partition(":")
    if not codec_id:
        raise click.BadParameter(f"{text!r} names no codec", param_hint="--codec")
    if not rest:
        return codec_id
    config: dict[str, Any] = {"id": codec_id}
    for item in rest.split(","):
        path, value = parse_assignment(item, "--codec")
        config[".".join(path)] = value
    return config


def codec_specs(values: Sequence[str]) -> list[Any] | None:
    """``--codec`` values as a writer's ``codecs=``; ``None`` when none were given, ``[]``
    for ``--codec none``."""
    if not values:
        return None
    if [v.strip().lower() for v in values] == ["none"]:
        return []
    return [parse_codec(value) for value in values]


def codec_option(function: F) -> F:
    return click.option(
        "-c",
        "--codec",
        "codecs",
        multiple=True,
        metavar="SPEC",
        help="A codec, in encode order (compression before encryption): zstd, "
        "zstd:level=9,dictionary=true, lz4, zlib:level=6, aesgcm:key_id=ID, or a JSON "
        "config. Repeatable.",
    )(function)


# ---------------------------------------------------------------------------- output


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def human_bytes(count: float | None) -> str:
    if count is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} PB"  # pragma: no cover - the loop returns


def rates(records: int, nbytes: int, seconds: float) -> str:
    if seconds <= 0:
        return ""
    return f"{records / seconds:,.0f} rec/s, {nbytes / 1e6 / seconds:,.1f} MB/s"


def record_json(index: int, data: bytes) -> dict[str, Any]:
    """A record for JSON output: as text when it is UTF-8, else as base64."""
    try:
        return {"index": index, "bytes": len(data), "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "index": index,
            "bytes": len(data),
            "base64": base64.b64encode(data).decode("ascii"),
        }


def preview(data: bytes, width: int = 60) -> str:
    """The start of a record, printable on one line."""
    shown = data[:width].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return text + ("…" if len(data) > width else "")


class Bar:
    """A progress bar on stderr counting bytes, with records and records/s alongside."""

    def __init__(
        self,
        description: str,
        *,
        total_bytes: int | None = None,
        total_records: int | None = None,
        enabled: bool = True,
    ) -> None:
        self.records = 0
        self.total_records = total_records
        self._started = time.perf_counter()
        self._last = 0.0
        self._bar = tqdm(
            total=total_bytes,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            leave=True,
        )

    def __call__(self, records: int, nbytes: int) -> None:
        self.records += records
        self._bar.update(nbytes)
        now = time.perf_counter()
        if now - self._last >= 0.2:
            self._last = now
            self._bar.set_postfix_str(self._postfix(now), refresh=False)

    def _postfix(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        total = f"/{self.total_records:,}" if self.total_records is not None else ""
        return f"{self.records:,}{total} rec, {self.records / elapsed:,.0f} rec/s"

    def close(self) -> None:
        self._bar.set_postfix_str(self._postfix(time.perf_counter()), refresh=False)
        self._bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def bar(description: str, **totals: Any) -> Bar:
    """A progress bar, shown when the settings say so."""
    return Bar(description, enabled=settings().show_progress(), **totals)


def stdout_bytes() -> Any:
    return click.get_binary_stream("stdout")


# ---------------------------------------------------------------------------- errors


def describe(error: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(error, SplitDataError):
        text = str(error)
    elif isinstance(error, (OSError, ValueError, LookupError, TypeError)):
        text = str(error) or type(error).__name__
        if isinstance(error, (KeyError, TypeError)):
            text = f"{type(error).__name__}: {text}"
    else:
        text = f"{type(error).__name__}: {error} (--debug shows the traceback)"
    return " ".join(text.split())


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


class Group(click.Group):
    """The ``splitdata`` group: every failure becomes one ``Error:`` line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        if hasattr(signal, "SIGTERM"):
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as err:
            signum = signal.SIGTERM if isinstance(err, _Terminated) else signal.SIGINT
            click.echo(
                "Interrupted: nothing half-done was committed (a copy or pack can be run again).",
                err=True,
            )
            ctx.exit(128 + int(signum))
        except BrokenPipeError:
            # The reader of stdout went away (| head): stop quietly, as other tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(128 + int(getattr(signal, "SIGPIPE", 13)))
        except Exception as err:
            current = ctx.meta.get(_META)
            if (current is not None and current.debug) or os.environ.get(DEBUG_ENV):
                raise
            raise click.ClickException(describe(err)) from err


def batched(indices: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for lo in range(0, len(indices), size):
        yield indices[lo : lo + size]
