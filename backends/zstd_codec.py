"""The ``zstd`` codec: Zstandard per record, optionally with a dictionary trained at write time.

Each record is one Zstandard frame in the *magicless* format (RFC 8878 without the 4-byte
magic number), with the content size and without a dictionary id or content checksum:
the record's checksum in the index already guards the stored bytes, and the dictionary
is pinned by the config (name, id and SHA-256, checked when it is loaded), so those
fields would only cost bytes on every record. Per-record overhead is then 5 bytes for
small records.

Small records compress poorly on their own, because each starts with an empty history.
With ``dictionary=True`` the writer hands :meth:`ZstdCodec.prepare` a sample of the first
records; a dictionary is trained on it with Zstandard's trainer and stored as a dataset
file under ``meta/``, which :meth:`ZstdCodec.from_config` reads back.

The library (``zstandard``) is imported on first use. Zstandard contexts are not safe for
concurrent use, so each thread gets its own compressor and decompressor, built on first
use; a pickled codec carries only its options and dictionary bytes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from splitdataloader.codecs import Codec
from splitdataloader.errors import CodecConfigError, CorruptDataError, DecodeError
from splitdataloader.hookspecs import RegisterCodec, hookimpl

# TID251 bans importing the source folder by name; a relative import inside the
# installed package is what it asks for.
from ._options import check_options, describe, parse_bool, parse_int  # noqa: TID251

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import zstandard

    from splitdataloader.codecs import CodecEnvironment, RecordContext

__all__ = ["ZstdCodec"]

logger = logging.getLogger(__name__)

#: Option names a config may hold.
_OPTIONS = (
    "level",
    "dictionary",
    "sample_size",
    "dict_size",
    "dictionary_name",
    "dictionary_id",
    "dictionary_sha256",
)
_RESOURCE_NAME = re.compile(r"meta/[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
#: Zstandard's own default dictionary size (110 KiB).
_DEFAULT_DICT_SIZE = 112_640
_DEFAULT_SAMPLE_SIZE = 4096


class _SampleSize:
    """``sample_size`` per codec object; read on the class, the default sample size."""

    def __get__(self, codec: ZstdCodec | None, owner: type[ZstdCodec] | None = None) -> int:
        if codec is None:
            # A caller that only has the class learns an upper bound for the default.
            return _DEFAULT_SAMPLE_SIZE
        return codec._wanted_sample()


class ZstdCodec(Codec):
    """Per-record Zstandard compression.

    Parameters
    ----------
    level
        Compression level from 1 (fastest) to 22 (smallest); 3 by default.
    dictionary
        Train a dictionary on a sample of the first records at write time (see
        :meth:`prepare`) and compress every record with it.
    sample_size
        How many of the first records to train the dictionary on (1 to 1,000,000).
    dict_size
        Maximum dictionary size in bytes (256 B to 16 MiB); 110 KiB by default, as the
        ``zstd`` command line.
    dictionary_name, dictionary_id, dictionary_sha256
        Set by :meth:`prepare` and recorded in the config: the dataset file holding the
        trained dictionary, its Zstandard id and its SHA-256. Not for users to set.

    Raises
    ------
    CodecConfigError
        An option is out of range or of the wrong type (for example ``level=99``).
    """

    codec_id: ClassVar[str] = "zstd"
    kind: ClassVar[str] = "compression"
    # Frames carry no content checksum (see the module doc): damage inside a literal can
    # decode to wrong bytes, which the dataset's record checksum catches before decoding.
    integrity: ClassVar[bool] = False

    def __init__(
        self,
        level: int = 3,
        *,
        dictionary: bool = False,
        sample_size: int = _DEFAULT_SAMPLE_SIZE,
        dict_size: int = _DEFAULT_DICT_SIZE,
        dictionary_name: str | None = None,
        dictionary_id: int | None = None,
        dictionary_sha256: str | None = None,
    ) -> None:
        cid = self.codec_id
        self.level = parse_int(cid, "level", level, 1, 22)
        self.dictionary = parse_bool(cid, "dictionary", dictionary)
        self._sample_size = parse_int(cid, "sample_size", sample_size, 1, 1_000_000)
        self.dict_size = parse_int(cid, "dict_size", dict_size, 256, 16 << 20)
        trained = (dictionary_name, dictionary_id, dictionary_sha256)
        if any(value is not None for value in trained):
            if not self.dictionary or None in trained:
                raise CodecConfigError(
                    "zstd: dictionary_name, dictionary_id and dictionary_sha256 go together, "
                    "with dictionary=true"
                )
            if not isinstance(dictionary_name, str) or not _RESOURCE_NAME.match(dictionary_name):
                raise CodecConfigError(
                    f"zstd: dictionary_name must be a file name under meta/, "
                    f"got {dictionary_name!r}"
                )
            if not isinstance(dictionary_sha256, str) or not _SHA256.match(dictionary_sha256):
                raise CodecConfigError("zstd: dictionary_sha256 must be 64 lowercase hex digits")
            parse_int(cid, "dictionary_id", dictionary_id, 1, 2**32 - 1)
        self.dictionary_name = dictionary_name
        self.dictionary_id = dictionary_id
        self.dictionary_sha256 = dictionary_sha256
        self._dict_data: bytes | None = None
        self._init_runtime()

    # -- runtime state: rebuilt lazily, never pickled ------------------------------------

    def _init_runtime(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._zdict: zstandard.ZstdCompressionDict | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_local", "_lock", "_zdict"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # The base class declares ``sample_size`` as a class attribute; this codec wants a
    # sample only while it still has a dictionary to train, of the size its options say.
    sample_size = _SampleSize()

    def _wanted_sample(self) -> int:
        if self.dictionary and self.dictionary_name is None:
            return self._sample_size
        return 0

    def __repr__(self) -> str:
        if not self.dictionary:
            return f"ZstdCodec(level={self.level})"
        if self.dictionary_name is None:
            return (
                f"ZstdCodec(level={self.level}, dictionary=True, "
                f"sample_size={self._sample_size}, dict_size={self.dict_size})"
            )
        return (
            f"ZstdCodec(level={self.level}, dictionary={self.dictionary_name!r}, "
            f"dictionary_id={self.dictionary_id})"
        )

    # -- config ------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id, "level": self.level}
        if self.dictionary:
            config.update(dictionary=True, sample_size=self._sample_size, dict_size=self.dict_size)
            if self.dictionary_name is not None:
                config.update(
                    dictionary_name=self.dictionary_name,
                    dictionary_id=self.dictionary_id,
                    dictionary_sha256=self.dictionary_sha256,
                )
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], env: CodecEnvironment) -> ZstdCodec:
        codec = cls(**check_options(cls.codec_id, config, _OPTIONS))
        if codec.dictionary_name is not None:
            data = env.read_resource(codec.dictionary_name)
            codec._attach_dictionary(bytes(data), env.dataset_id)
        return codec

    def _attach_dictionary(self, data: bytes, dataset_id: str) -> None:
        """Check ``data`` against the recorded id and hash, then use it."""
        import zstandard  # noqa: PLC0415 - optional, imported on first use

        name = self.dictionary_name
        if hashlib.sha256(data).hexdigest() != self.dictionary_sha256:
            raise CorruptDataError(
                f"zstd: dictionary {name} of dataset {dataset_id} does not match its "
                "recorded SHA-256: it is damaged or was replaced",
                path=name,
            )
        try:
            found = zstandard.ZstdCompressionDict(data).dict_id()
        except zstandard.ZstdError as err:  # pragma: no cover - the hash matched
            raise CorruptDataError(
                f"zstd: dictionary {name} of dataset {dataset_id} is not a zstd dictionary",
                path=name,
            ) from err
        if found != self.dictionary_id:
            raise CorruptDataError(
                f"zstd: dictionary {name} of dataset {dataset_id} has id {found}, "
                f"the config records {self.dictionary_id}",
                path=name,
            )
        self._dict_data = data

    # -- training ----------------------------------------------------------------------

    def prepare(self, sample: Sequence[bytes], env: CodecEnvironment) -> ZstdCodec:
        """Train the dictionary on ``sample`` and store it in the dataset.

        Without ``dictionary=True``, or when the dictionary is already trained, this
        returns the codec itself. When the sample is too small for Zstandard's trainer
        (a handful of records, or fewer bytes than the dictionary would hold), the
        returned codec compresses without a dictionary and its config says so.

        Parameters
        ----------
        sample
            The first records (at most :attr:`sample_size` of them).
        env
            The writer's environment; ``env.write_resource`` stores the dictionary.

        Returns
        -------
        ZstdCodec
            A codec whose config names the stored dictionary.

        Raises
        ------
        CodecConfigError
            ``env`` cannot store files (no ``write_resource``).
        """
        if not self.dictionary or self.dictionary_name is not None:
            return self
        import zstandard  # noqa: PLC0415 - optional, imported on first use

        # The stubs ask for a list of a union type; a list of bytes is one.
        records: list[Any] = [bytes(record) for record in sample[: self._sample_size]]
        try:
            trained = zstandard.train_dictionary(self.dict_size, records, level=self.level)
        except zstandard.ZstdError as err:
            logger.info(
                "zstd: no dictionary for dataset %s: training on %d records failed (%s); "
                "compressing without one",
                env.dataset_id,
                len(records),
                err,
            )
            return ZstdCodec(level=self.level)
        data = trained.as_bytes()
        digest = hashlib.sha256(data).hexdigest()
        dict_id = trained.dict_id()
        if env.write_resource is None:
            raise CodecConfigError("zstd: a dictionary can only be trained by a writer")
        name = env.write_resource(f"zstd-{dict_id:08x}-{digest[:16]}.dict", data)
        logger.debug(
            "zstd: trained a %d-byte dictionary (id %d) on %d records of dataset %s",
            len(data),
            dict_id,
            len(records),
            env.dataset_id,
        )
        codec = ZstdCodec(
            level=self.level,
            dictionary=True,
            sample_size=self._sample_size,
            dict_size=self.dict_size,
            dictionary_name=name,
            dictionary_id=dict_id,
            dictionary_sha256=digest,
        )
        codec._dict_data = data
        return codec

    # -- the hot path ------------------------------------------------------------------

    def _params(self) -> tuple[Any, zstandard.ZstdCompressionDict | None]:
        """Build (once) the frame parameters and the shared dictionary object."""
        import zstandard  # noqa: PLC0415 - optional, imported on first use

        if self.dictionary and self._dict_data is None:
            raise CodecConfigError(
                f"zstd: {self!r} has no dictionary yet: the writer trains it with prepare(), "
                "a reader loads it with from_config()"
            )
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level,
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_content_size=1,
            write_checksum=0,
            write_dict_id=0,
        )
        if self._dict_data is not None and self._zdict is None:
            zdict = zstandard.ZstdCompressionDict(
                self._dict_data, dict_type=zstandard.DICT_TYPE_FULLDICT
            )
            zdict.precompute_compress(compression_params=params)
            self._zdict = zdict
        return params, self._zdict

    def _compressor(self) -> zstandard.ZstdCompressor:
        import zstandard  # noqa: PLC0415 - optional, imported on first use

        with self._lock:
            params, zdict = self._params()
            compressor = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
        self._local.compressor = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        import zstandard  # noqa: PLC0415 - optional, imported on first use

        with self._lock:
            params, zdict = self._params()
            decompressor = zstandard.ZstdDecompressor(
                dict_data=zdict, format=zstandard.FORMAT_ZSTD1_MAGICLESS
            )
            if zdict is not None:
                # The shared dictionary builds its decompression tables on first use: do
                # that here, under the lock, rather than racing another thread for it.
                empty = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
                decompressor.decompress(empty.compress(b""))
        self._local.decompressor = decompressor
        return decompressor

    def encode(self, data: bytes | memoryview, context: RecordContext) -> bytes:
        compressor: zstandard.ZstdCompressor
        try:
            compressor = self._local.compressor
        except AttributeError:
            compressor = self._compressor()
        return compressor.compress(data)

    def decode(self, data: bytes, context: RecordContext) -> bytes:
        decompressor: zstandard.ZstdDecompressor
        try:
            decompressor = self._local.decompressor
        except AttributeError:
            decompressor = self._decompressor()
        try:
            # Bytes after the frame are ignored, as zstd does by default: checking for them
            # costs more than the decompression of a small record, and the frame's own
            # content is what comes back.
            return decompressor.decompress(data)
        except Exception as err:
            import zstandard  # noqa: PLC0415 - optional, imported on first use

            # ZstdError for a damaged frame; MemoryError for an absurd content size.
            if not isinstance(err, (zstandard.ZstdError, MemoryError)):
                raise
            raise DecodeError(
                f"zstd: {describe(context)} is not a valid zstd frame ({err})",
                record=context.record,
            ) from err


@hookimpl
def splitdataloader_register_codecs(register: RegisterCodec) -> None:
    """Register the ``zstd`` codec; it needs ``zstandard`` (extra ``zstd``)."""
    register(ZstdCodec, requires=("zstandard",), extra="zstd")
