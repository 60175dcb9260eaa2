"""The built-in key providers, ``env`` and ``file``, and how they read a key.

A key is 32 bytes (AES-256). Both providers accept it as 64 hexadecimal digits or as
base64 (standard or URL-safe alphabet, padding optional); a key file may also hold the
32 raw bytes. Surrounding whitespace is ignored. Nothing here ever puts a key, or text
that held one, into a message, a repr or a log: errors name the key id and where the
key was looked for.

``env``
    Reads ``SPLITDATALOADER_KEY_<NAME>``, where ``<NAME>`` is the key id upper-cased
    with every character other than ``A``-``Z`` and ``0``-``9`` replaced by ``_``
    (key id ``prod/2024-01`` -> ``SPLITDATALOADER_KEY_PROD_2024_01``). Distinct key ids
    can map to one name (``a-b`` and ``a_b``); use key ids that differ in letters and
    digits. The environment is read on each look-up, never at import.
``file``
    Option ``path``: a directory holding ``<key id>.key`` files, or one key file, which
    serves the key id given by option ``key_id`` or else its name without ``.key``.
    Without ``path``, the directory named by ``SPLITDATALOADER_KEY_DIR``. Key ids that are
    not plain file names (a ``/``, a leading ``.``) are refused in a directory.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, ClassVar

from splitdataloader.codecs import KeyProvider
from splitdataloader.errors import CodecConfigError, KeyUnavailableError
from splitdataloader.hookspecs import RegisterKeyProvider, hookimpl

__all__ = ["KEY_SIZE", "EnvKeyProvider", "FileKeyProvider", "env_variable", "parse_key"]

logger = logging.getLogger(__name__)

#: Bytes in a key: AES-256.
KEY_SIZE = 32
ENV_PREFIX = "SPLITDATALOADER_KEY_"
ENV_KEY_DIR = "SPLITDATALOADER_KEY_DIR"
#: A key file larger than this is not a key file.
_MAX_KEY_FILE = 4096
_HEX = re.compile(rb"[0-9A-Fa-f]{64}\Z")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")
_FILE_KEY_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:+=-]*\Z")


def env_variable(key_id: str, prefix: str = ENV_PREFIX) -> str:
    """Name the environment variable that holds ``key_id``'s key.

    Parameters
    ----------
    key_id
        The key id, as a dataset's config records it.
    prefix
        The variable name's prefix.

    Returns
    -------
    str
        ``prefix`` + the key id upper-cased, each character outside ``A-Z0-9`` made ``_``.
    """
    return prefix + _NOT_ALNUM.sub("_", key_id.upper())


def parse_key(text: bytes, *, key_id: str, source: str, raw: bool = False) -> bytes:
    """Read a 32-byte key from hex or base64 text (or 32 raw bytes when ``raw``).

    Parameters
    ----------
    text
        What the variable or file holds.
    key_id
        The key id, for the error message.
    source
        Where ``text`` came from, for the error message (never the text itself).
    raw
        Accept exactly 32 bytes as the key itself (key files).

    Returns
    -------
    bytes
        The key.

    Raises
    ------
    KeyUnavailableError
        ``text`` is not a key in any accepted form.
    """
    if raw and len(text) == KEY_SIZE:
        return bytes(text)
    stripped = text.strip()
    if _HEX.match(stripped):
        return bytes.fromhex(stripped.decode("ascii"))
    for alphabet in (b"+/", b"-_"):
        try:
            padded = stripped + b"=" * (-len(stripped) % 4)
            key = base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_SIZE:
            return key
    forms = "32 raw bytes, 64 hex digits or base64" if raw else "64 hex digits or base64"
    # No `from err`: a decoder's message may quote the offending text.
    raise KeyUnavailableError(
        f"{source} does not hold a {KEY_SIZE}-byte key for key id {key_id!r} (expected {forms})"
    ) from None


def _check_options(provider_id: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CodecConfigError(
            f"key provider {provider_id!r}: unknown option(s) "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(allowed) or 'none'}"
        )


class EnvKeyProvider(KeyProvider):
    """Keys from environment variables ``SPLITDATALOADER_KEY_<NAME>`` (see the module doc).

    Parameters
    ----------
    prefix
        The variable names' prefix, ``SPLITDATALOADER_KEY_`` by default.

    Raises
    ------
    CodecConfigError
        An unknown option, or a prefix that is not a string.
    """

    provider_id: ClassVar[str] = "env"

    def __init__(self, **options: Any) -> None:
        _check_options(self.provider_id, options, ("prefix",))
        prefix = options.get("prefix", ENV_PREFIX)
        if not isinstance(prefix, str) or not prefix:
            raise CodecConfigError("key provider 'env': option 'prefix' must be a string")
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"EnvKeyProvider(prefix={self.prefix!r})"

    def get_key(self, key_id: str) -> bytes:
        """Return the key for ``key_id`` from its environment variable.

        Raises
        ------
        KeyUnavailableError
            The variable is not set or does not hold a key.
        """
        name = env_variable(key_id, self.prefix)
        value = os.environ.get(name)
        if value is None:
            raise KeyUnavailableError(
                f"no key for key id {key_id!r}: environment variable {name} is not set"
            )
        try:
            text = value.encode("ascii")
        except UnicodeEncodeError:
            text = b"?"  # not a key in any form; parse_key says so
        return parse_key(text, key_id=key_id, source=f"environment variable {name}")


class FileKeyProvider(KeyProvider):
    """Keys from key files (see the module doc).

    Parameters
    ----------
    path
        A directory of ``<key id>.key`` files, or one key file. Default: the directory in
        ``SPLITDATALOADER_KEY_DIR``, read at each look-up.
    key_id
        With a single key file: the key id it serves (default: its name without ``.key``).

    Raises
    ------
    CodecConfigError
        An unknown option or an option of the wrong type.
    """

    provider_id: ClassVar[str] = "file"

    def __init__(self, **options: Any) -> None:
        _check_options(self.provider_id, options, ("path", "key_id"))
        path = options.get("path")
        key_id = options.get("key_id")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise CodecConfigError("key provider 'file': option 'path' must be a path")
        if key_id is not None and not isinstance(key_id, str):
            raise CodecConfigError("key provider 'file': option 'key_id' must be a string")
        self.path = None if path is None else Path(path)
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"FileKeyProvider(path={self.path!r}, key_id={self.key_id!r})"

    def _locate(self, key_id: str) -> Path:
        if self.path is None:
            folder = os.environ.get(ENV_KEY_DIR)
            if not folder:
                raise KeyUnavailableError(
                    f"no key file for key id {key_id!r}: the 'file' key provider has no "
                    f"path and {ENV_KEY_DIR} is not set"
                )
            base = Path(folder)
        else:
            base = self.path
        if self.path is not None and not base.is_dir():
            served = self.key_id if self.key_id is not None else base.name.removesuffix(".key")
            if served != key_id:
                raise KeyUnavailableError(
                    f"no key file for key id {key_id!r}: key file {base} holds key id {served!r}"
                )
            return base
        if not _FILE_KEY_ID.match(key_id):
            raise KeyUnavailableError(
                f"no key file for key id {key_id!r}: it is not a plain file name"
            )
        return base / f"{key_id}.key"

    def get_key(self, key_id: str) -> bytes:
        """Return the key for ``key_id`` from its key file.

        Raises
        ------
        KeyUnavailableError
            No such file, it cannot be read, or it does not hold a key.
        """
        path = self._locate(key_id)
        try:
            with path.open("rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_KEY_FILE:
                    raise KeyUnavailableError(
                        f"key file {path} for key id {key_id!r} is not a key file "
                        f"(a regular file of at most {_MAX_KEY_FILE} bytes)"
                    )
                text = file.read(_MAX_KEY_FILE + 1)
        except OSError as err:
            if isinstance(err, KeyUnavailableError):
                raise
            raise KeyUnavailableError(
                f"no key for key id {key_id!r}: cannot read key file {path} "
                f"({err.strerror or type(err).__name__})"
            ) from None
        if os.name == "posix" and info.st_mode & 0o077:
            logger.warning(
                "key file %s (key id %r) can be read by other users; chmod 600 it",
                path,
                key_id,
            )
        return parse_key(text, key_id=key_id, source=f"key file {path}", raw=True)


@hookimpl
def splitdataloader_register_key_providers(register: RegisterKeyProvider) -> None:
    """Register the ``env`` and ``file`` key providers (standard library only)."""
    register(EnvKeyProvider)
    register(FileKeyProvider)
