"""Validation of codec options and the wording of codec errors, shared by the first-party codecs.

Small ``parse_*`` functions turn one option into a checked value or raise
:class:`~splitdataloader.errors.CodecConfigError` naming the codec and the option. This
module imports no optional library and does no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from splitdataloader.errors import CodecConfigError

if TYPE_CHECKING:
    from splitdataloader.codecs import RecordContext

__all__ = ["check_options", "describe", "parse_bool", "parse_int"]


def check_options(
    codec_id: str, config: Mapping[str, Any], allowed: Collection[str]
) -> dict[str, Any]:
    """Return ``config`` without its ``"id"``, after checking it holds only known options.

    Parameters
    ----------
    codec_id
        The codec the config is for; a different ``"id"`` is an error.
    config
        A codec config as recorded in a manifest.
    allowed
        The option names the codec knows.

    Returns
    -------
    dict
        The options, ready to pass to the codec's constructor as keywords.

    Raises
    ------
    CodecConfigError
        The id differs, or an option is unknown.
    """
    if not isinstance(config, Mapping):
        raise CodecConfigError(
            f"{codec_id}: a codec config is a JSON object, not {type(config).__name__}"
        )
    found = config.get("id", codec_id)
    if found != codec_id:
        raise CodecConfigError(f"{codec_id}: config is for codec {found!r}")
    options = {name: value for name, value in config.items() if name != "id"}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CodecConfigError(
            f"{codec_id}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(allowed))}"
        )
    return options


def parse_int(codec_id: str, name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an integer in ``[low, high]`` (``bool`` is refused).

    Raises
    ------
    CodecConfigError
        Naming the codec, the option and the accepted range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecConfigError(
            f"{codec_id}: option {name!r} must be an integer from {low} to {high}, "
            f"not {type(value).__name__}"
        )
    if not low <= value <= high:
        raise CodecConfigError(
            f"{codec_id}: option {name!r} must be from {low} to {high}, got {value}"
        )
    return value


def parse_bool(codec_id: str, name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``.

    Raises
    ------
    CodecConfigError
        Naming the codec and the option.
    """
    if not isinstance(value, bool):
        raise CodecConfigError(
            f"{codec_id}: option {name!r} must be true or false, not {type(value).__name__}"
        )
    return value


def describe(context: RecordContext) -> str:
    """Name a record for an error message: ``record 7 of dataset 3f2a…``."""
    return f"record {context.record} of dataset {context.dataset_id}"
