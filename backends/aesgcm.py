"""The ``aesgcm`` codec: AES-256-GCM per record, bound to its dataset and position.

Stored bytes: a fresh random 96-bit nonce (12 bytes), then the ciphertext with its 16-byte
tag, as ``AESGCM.encrypt`` returns it. The associated data, authenticated but not
stored, binds the record to where it belongs::

    b"splitdataloader/aesgcm/1" || u16 len(key_id) || key_id
                                || u16 len(dataset_id) || dataset_id || u64 record

(UTF-8 strings, little-endian integers). A record copied to another position or another
dataset, or read with another key, fails authentication and raises
:class:`~splitdataloader.errors.DecryptionError` naming the record, the dataset and the
key id. Random nonces are safe for up to 2**32 records per key (NIST SP 800-38D); rotate
the key id before that.

The key comes from a :class:`~splitdataloader.codecs.KeyRing` (keys supplied at run time,
then key providers) by the key id in the config, never from the config itself. The
config also records ``key_check``, the first 8 bytes of HMAC-SHA256(key, a fixed label):
it reveals nothing usable about a 256-bit key, and lets a reader with the wrong key fail
at open with a clear message instead of on the first record.

A key never appears in the config, a repr, a log record or an exception message. A
pickled codec does carry its key, since worker processes need it: pickles cross process
boundaries, never storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import struct
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from splitdataloader.codecs import Codec, KeyRing
from splitdataloader.errors import CodecConfigError, DecryptionError, KeyUnavailableError
from splitdataloader.hookspecs import RegisterCodec, hookimpl

# TID251 bans importing the source folder by name; a relative import inside the
# installed package is what it asks for.
from ._options import check_options, describe  # noqa: TID251
from .keys import KEY_SIZE  # noqa: TID251

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from splitdataloader.codecs import CodecEnvironment, RecordContext

__all__ = ["AesGcmCodec"]

logger = logging.getLogger(__name__)

NONCE_SIZE = 12
TAG_SIZE = 16
#: Records from this size on are decrypted through a memoryview rather than a copy.
_COPY_LIMIT = 4096
_U64 = struct.Struct("<Q").pack
_AAD_LABEL = b"splitdataloader/aesgcm/1"
_CHECK_LABEL = b"splitdataloader/aesgcm/key-check/1"
#: Printable ASCII without spaces: room for KMS ARNs, aliases and paths.
_KEY_ID = re.compile(r"[!-~]{1,256}\Z")
_PROVIDER_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_KEY_CHECK = re.compile(r"[0-9a-f]{16}\Z")


class _Secret:
    """Key bytes that never show themselves: not in repr, str or an object dump."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<key hidden>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Secret, (self.value,))


class _Nonces:
    """Random nonces drawn from the OS in batches: one system call per 256 records.

    A forked child must never hand out nonces its parent also holds (a repeated nonce
    under one key breaks GCM), so every batch is dropped in the child after a fork.
    """

    __slots__ = ("batch", "generation", "position")

    def __init__(self) -> None:
        _watch_forks()
        self.batch = b""
        self.position = 0
        self.generation = -1

    def take(self) -> bytes:
        position = self.position
        if position >= len(self.batch) or self.generation != _fork_generation[0]:
            self.batch = os.urandom(NONCE_SIZE * _NONCES_PER_BATCH)
            self.generation = _fork_generation[0]
            position = 0
        self.position = position + NONCE_SIZE
        return self.batch[position : position + NONCE_SIZE]


_NONCES_PER_BATCH = 256
#: Counts the forks this process descends from (since the first nonce batch).
_fork_generation = [0]
_fork_watch_lock = threading.Lock()
_fork_watched = False


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


def _watch_forks() -> None:
    global _fork_watched  # noqa: PLW0603 - one process-wide registration, made on first use
    with _fork_watch_lock:
        if not _fork_watched and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_watched = True


def _key_check(key: bytes) -> str:
    return hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


class AesGcmCodec(Codec):
    """AES-256-GCM encryption of each record.

    Parameters
    ----------
    key_id
        The id of the key (required); recorded in the config and bound into every record.
    provider
        The id of the key provider to ask (``"env"``, ``"file"``, a plugin's); by default
        the key ring tries the keys supplied at run time, then every provider.
    key_check
        Set from the key and recorded in the config (see the module doc). Not for users.
    keys
        Where to find the key when the codec is built directly rather than by the writer
        or reader (which supply their own key ring): a :class:`KeyRing`, or a mapping from
        key id to key bytes.

    Raises
    ------
    CodecConfigError
        ``key_id`` is missing or not printable ASCII without spaces (at most 256
        characters), or another option is invalid.
    """

    codec_id: ClassVar[str] = "aesgcm"
    kind: ClassVar[str] = "encryption"

    def __init__(
        self,
        key_id: str | None = None,
        provider: str | None = None,
        *,
        key_check: str | None = None,
        keys: KeyRing | Mapping[str, bytes] | None = None,
    ) -> None:
        if key_id is None:
            raise CodecConfigError("aesgcm: option 'key_id' is required (which key to use)")
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise CodecConfigError(
                "aesgcm: option 'key_id' must be 1 to 256 printable ASCII characters without spaces"
            )
        if provider is not None and (
            not isinstance(provider, str) or not _PROVIDER_ID.match(provider)
        ):
            raise CodecConfigError(f"aesgcm: option 'provider' is not a provider id: {provider!r}")
        if key_check is not None and (
            not isinstance(key_check, str) or not _KEY_CHECK.match(key_check)
        ):
            raise CodecConfigError("aesgcm: option 'key_check' must be 16 lowercase hex digits")
        self.key_id = key_id
        self.provider = provider
        self._key_check = key_check
        self._key: _Secret | None = None
        self._ring: KeyRing | None = (
            keys if isinstance(keys, KeyRing) or keys is None else (KeyRing(keys=keys))
        )
        self._init_runtime()

    def _init_runtime(self) -> None:
        # AESGCM objects keep no per-call state (each call sets up its own cipher
        # context), so one serves every thread; the nonce batches are per thread.
        self._cipher: AESGCM | None = None
        self._local = threading.local()
        self._aad_for: tuple[str | None, bytes] = (None, b"")

    def __getstate__(self) -> dict[str, Any]:
        if self._key is None and self._ring is not None:
            # Without a key now, the unpickled codec reports it when used.
            with contextlib.suppress(KeyUnavailableError):
                self._resolve(self._ring, None)
        state = self.__dict__.copy()
        for name in ("_cipher", "_local", "_aad_for", "_ring"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ring = None
        self._init_runtime()

    def __repr__(self) -> str:
        provider = "" if self.provider is None else f", provider={self.provider!r}"
        return f"AesGcmCodec(key_id={self.key_id!r}{provider})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AesGcmCodec) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((self.codec_id, self.key_id, self.provider))

    # -- keys --------------------------------------------------------------------------

    def _resolve(self, ring: KeyRing, dataset_id: str | None) -> _Secret:
        """Fetch the key from ``ring`` and check it against the recorded key check."""
        where = f"dataset {dataset_id}: " if dataset_id else ""
        try:
            key = ring.get(self.key_id, self.provider)
        except KeyUnavailableError as err:
            # The ring's message names the key id and the providers asked, never a key.
            raise KeyUnavailableError(f"aesgcm: {where}{err}") from None
        if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != KEY_SIZE:
            raise KeyUnavailableError(
                f"aesgcm: {where}the key for key id {self.key_id!r} is not {KEY_SIZE} bytes "
                "(AES-256)"
            )
        key = bytes(key)
        check = _key_check(key)
        if self._key_check is not None and not hmac.compare_digest(check, self._key_check):
            raise DecryptionError(
                f"aesgcm: {where}the key supplied for key id {self.key_id!r} is not the key "
                "the data was encrypted with"
            )
        self._key_check = check
        self._key = secret = _Secret(key)
        logger.debug("aesgcm: %skey id %r resolved", where, self.key_id)
        return secret

    def _aead(self, context: RecordContext) -> AESGCM:
        """Build this thread's cipher object, fetching the key first if need be."""
        from cryptography.hazmat.primitives.ciphers.aead import (  # noqa: PLC0415
            AESGCM,  # optional, imported on first use
        )

        key = self._key
        if key is None:
            if self._ring is None:
                raise KeyUnavailableError(
                    f"aesgcm: dataset {context.dataset_id}: no key for key id "
                    f"{self.key_id!r}: the codec has no key ring (pass keys=, or let the "
                    "writer or the loader build it)"
                )
            key = self._resolve(self._ring, context.dataset_id)
        aead = AESGCM(key.value)
        self._cipher = aead
        return aead

    def _aad(self, context: RecordContext) -> bytes:
        dataset_id, prefix = self._aad_for
        if dataset_id != context.dataset_id:
            key_id = self.key_id.encode()
            dataset = context.dataset_id.encode()
            prefix = b"".join(
                (
                    _AAD_LABEL,
                    len(key_id).to_bytes(2, "little"),
                    key_id,
                    len(dataset).to_bytes(2, "little"),
                    dataset,
                )
            )
            # One tuple, assigned at once: other threads see the old or the new pair.
            self._aad_for = (context.dataset_id, prefix)
        return prefix + _U64(context.record)

    # -- config ------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id, "key_id": self.key_id}
        if self.provider is not None:
            config["provider"] = self.provider
        if self._key_check is not None:
            config["key_check"] = self._key_check
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: CodecEnvironment) -> AesGcmCodec:
        """Rebuild the codec and fetch its key from ``env.keys``.

        When the ring has no key for the key id yet, the codec keeps the ring and raises
        :class:`~splitdataloader.errors.KeyUnavailableError` (naming the dataset and the
        key id) on its first record instead, so that a chain can be resolved before its
        keys are configured.

        Raises
        ------
        DecryptionError
            The key found is not the one the dataset was written with.
        """
        options = check_options(cls.codec_id, config, ("key_id", "provider", "key_check"))
        codec = cls(**options, keys=env.keys)
        try:
            codec._resolve(env.keys, env.dataset_id)
        except KeyUnavailableError as err:
            logger.debug("aesgcm: key lookup deferred to first use (%s)", err)
        return codec

    def prepare(self, sample: Sequence[bytes], env: CodecEnvironment) -> AesGcmCodec:
        """Fetch the key from the writer's key ring, so that a missing key fails early.

        Raises
        ------
        KeyUnavailableError
            Neither the writer's key ring nor the codec's own has the key.
        DecryptionError
            The key found is not the one recorded in the codec's config.
        """
        if self._key is None:
            try:
                self._resolve(env.keys, env.dataset_id)
            except KeyUnavailableError:
                if self._ring is None or self._ring is env.keys:
                    raise
                self._resolve(self._ring, env.dataset_id)
        return self

    # -- the hot path ------------------------------------------------------------------

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        aead = self._cipher
        if aead is None:
            aead = self._aead(context)
        nonces: _Nonces
        try:
            nonces = self._local.nonces
        except AttributeError:
            nonces = self._local.nonces = _Nonces()
        nonce = nonces.take()
        return nonce + aead.encrypt(nonce, data, self._aad(context))

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        aead = self._cipher
        if aead is None:
            aead = self._aead(context)
        if len(data) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError(
                f"aesgcm: {describe(context)} is {len(data)} bytes, too short for an "
                f"AES-GCM record (key id {self.key_id!r})",
                record=context.record,
            )
        # Slicing a memoryview avoids copying a large record; bytes slices are cheaper below.
        body = data[NONCE_SIZE:] if len(data) < _COPY_LIMIT else memoryview(data)[NONCE_SIZE:]
        try:
            return aead.decrypt(data[:NONCE_SIZE], body, self._aad(context))
        except Exception as err:
            from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - optional

            if not isinstance(err, InvalidTag):
                raise
            raise DecryptionError(
                f"aesgcm: {describe(context)} failed authentication with key id "
                f"{self.key_id!r}: wrong key, or the record was altered or moved",
                record=context.record,
            ) from None


@hookimpl
def splitdataloader_register_codecs(register: RegisterCodec) -> None:
    """Register the ``aesgcm`` codec; it needs ``cryptography`` (extra ``crypto``)."""
    register(AesGcmCodec, requires=("cryptography",), extra="crypto")
