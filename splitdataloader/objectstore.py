"""Object-store specifics behind :mod:`splitdataloader.storage`: S3 conditional writes,
versioned reads, error classification and client defaults.

Everything here takes an fsspec filesystem and a path; it is used by ``storage`` only.
S3 is recognised by behaviour (an ``s3fs.S3FileSystem`` or a subclass), so S3-compatible
endpoints (MinIO, R2, Ceph) get the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CACHE_PROTOCOLS",
    "DEFAULT_MAX_POOL_CONNECTIONS",
    "PendingUpload",
    "PreconditionFailedError",
    "abort_upload",
    "http_status",
    "is_s3",
    "pending_uploads",
    "put_if",
    "read_with_etag",
    "with_s3_defaults",
]

#: Connections botocore may keep open to S3; its default of 10 caps concurrent reads.
DEFAULT_MAX_POOL_CONNECTIONS = 64

#: fsspec protocols that keep a local copy of another filesystem's files.
CACHE_PROTOCOLS = frozenset({"simplecache", "filecache", "blockcache", "cached"})

#: S3 codes that mean "the object changed under you" on a conditional write.
_CONFLICT_CODES = frozenset({"PreconditionFailedError", "ConditionalRequestConflict"})


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload started and neither completed nor aborted: its parts are stored
    (and billed) but no object shows them."""

    #: ``bucket/key`` of the object the upload would create.
    path: str
    upload_id: str
    #: When it was started (POSIX seconds), if the store said.
    initiated: float | None


class PreconditionFailedError(Exception):
    """A conditional write found the object in another state than expected."""


def is_s3(fs: Any) -> bool:
    """True for an s3fs filesystem (AWS or any S3-compatible endpoint)."""
    return hasattr(fs, "_call_s3") and hasattr(fs, "split_path")


def with_s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a connection pool large enough for concurrent ranged reads.

    Only fills in what the caller left out; a caller's ``max_pool_connections`` wins, and
    nothing else is copied or changed.
    """
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("max_pool_connections", DEFAULT_MAX_POOL_CONNECTIONS)
    # Everything else is passed as given (a botocore session object stays shared).
    return {**options, "config_kwargs": config}


def _s3_response(error: BaseException) -> dict[str, Any] | None:
    """The parsed S3 response carried by ``error`` or by one of its causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            return response
        current = current.__cause__ or current.__context__
    return None


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind ``error`` or its causes, when an S3 response carried one."""
    response = _s3_response(error) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _error_code(error: BaseException) -> str | None:
    response = _s3_response(error) or {}
    code = response.get("Error", {}).get("Code")
    return code if isinstance(code, str) else None


def read_with_etag(fs: Any, path: str) -> tuple[bytes, str]:
    """The bytes of ``path`` and the ETag of exactly that version (one GET)."""
    from fsspec.asyn import sync  # noqa: PLC0415 - only object stores need it

    bucket, key, _ = fs.split_path(path)

    async def fetch() -> tuple[bytes, str]:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            data: bytes = await body.read()
        finally:
            body.close()
        return data, str(response["ETag"])

    result: tuple[bytes, str] = sync(fs.loop, fetch)
    return result


def put_if(fs: Any, path: str, data: bytes, etag: str | None) -> str:
    """PUT ``data`` at ``path`` only if the object still has ``etag`` (or, for ``None``,
    does not exist yet), and return the new object's ETag; otherwise raise
    :class:`PreconditionFailedError`."""
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except FileExistsError as err:
        raise PreconditionFailedError(path) from err
    except OSError as err:
        if _error_code(err) in _CONFLICT_CODES or http_status(err) in (409, 412):
            raise PreconditionFailedError(path) from err
        raise
    finally:
        fs.invalidate_cache(path)
    return str(response["ETag"])


def pending_uploads(fs: Any, path: str) -> list[PendingUpload]:
    """The unfinished multipart uploads of objects under the folder ``path``."""
    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""
    found: list[PendingUpload] = []
    markers: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
        for upload in page.get("Uploads", []):
            initiated = getattr(upload.get("Initiated"), "timestamp", None)
            found.append(
                PendingUpload(
                    f"{bucket}/{upload['Key']}",
                    str(upload["UploadId"]),
                    float(initiated()) if callable(initiated) else None,
                )
            )
        if not page.get("IsTruncated"):
            return found
        markers = {
            "KeyMarker": str(page.get("NextKeyMarker") or ""),
            "UploadIdMarker": str(page.get("NextUploadIdMarker") or ""),
        }


def abort_upload(fs: Any, upload: PendingUpload) -> None:
    """Abort ``upload``, deleting its parts; one completed or aborted meanwhile is left be."""
    bucket, key, _ = fs.split_path(upload.path)
    try:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload.upload_id)
    except FileNotFoundError:
        return  # NoSuchUpload
    except OSError as err:
        if _error_code(err) != "NoSuchUpload" and http_status(err) != 404:
            raise
