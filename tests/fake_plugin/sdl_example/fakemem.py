"""The ``fakemem://`` backend: fsspec's in-memory filesystem under a scheme of its own.

``fakemem://bucket/path`` lives at ``<root>/bucket/path`` in the memory filesystem, where
``<root>`` comes from the storage option ``root``, else from the environment variable
``FAKEMEM_ROOT``, else is ``/fakemem``: the way a real backend takes its endpoint or
credentials from the environment when the user gives none.
"""

from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem

from splitdataloader.hookspecs import RegisterBackend, hookimpl


def fakemem_backend(url: str, storage_options: dict[str, Any]) -> tuple[MemoryFileSystem, str]:
    """Open ``fakemem://<path>``: return the filesystem and the dataset's root in it."""
    scheme, separator, path = url.partition("://")
    if scheme != "fakemem" or not separator:
        raise ValueError(f"not a fakemem URL: {url!r}")
    options = dict(storage_options)
    root = options.pop("root", None) or os.environ.get("FAKEMEM_ROOT", "/fakemem")
    if options:
        raise TypeError(f"unknown fakemem storage options: {sorted(options)}")
    return MemoryFileSystem(), f"{root.rstrip('/')}/{path.strip('/')}"


@hookimpl
def splitdataloader_register_backends(register: RegisterBackend) -> None:
    register("fakemem", fakemem_backend)
