"""The hooks a splitdataloader plugin can implement, and the markers to implement them.

A plugin is a module (or any object) holding functions decorated with :data:`hookimpl`
whose names are the hook names below, made known through an entry point in the
``splitdataloader`` group. Every hook is a *registration* hook: it receives a ``register``
callback and calls it once per thing it provides. The core owns the registries and their
rules (duplicate names, missing optional dependencies); see :mod:`splitdataloader.plugins`.
This module only declares; it loads nothing.

Example, in a plugin's module::

    from splitdataloader.hookspecs import hookimpl

    @hookimpl
    def splitdataloader_register_codecs(register):
        register(MyCodec, requires=("mylib",), extra="mylib")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from .codecs import Codec
    from .keys import KeyProvider

__all__ = [
    "BackendFactory",
    "RegisterBackend",
    "RegisterCodec",
    "RegisterKeyProvider",
    "hookimpl",
    "hookspec",
    "splitdataloader_register_backends",
    "splitdataloader_register_codecs",
    "splitdataloader_register_key_providers",
]

#: Marks the hook specifications below (used by the core only).
hookspec = pluggy.HookspecMarker("splitdataloader")
#: Marks a plugin's hook implementations.
hookimpl = pluggy.HookimplMarker("splitdataloader")

#: ``(url, storage_options) -> (filesystem, root path inside it)``.
BackendFactory = Callable[[str, dict[str, Any]], tuple[Any, str]]


class RegisterCodec(Protocol):
    """The ``register`` callback of :func:`splitdataloader_register_codecs`."""

    def __call__(
        self,
        codec_class: type[Codec],
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
    ) -> None: ...


class RegisterKeyProvider(Protocol):
    """The ``register`` callback of :func:`splitdataloader_register_key_providers`."""

    def __call__(
        self,
        provider_class: type[KeyProvider],
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
    ) -> None: ...


class RegisterBackend(Protocol):
    """The ``register`` callback of :func:`splitdataloader_register_backends`."""

    def __call__(
        self,
        scheme: str,
        factory: BackendFactory,
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
    ) -> None: ...


@hookspec
def splitdataloader_register_codecs(register: RegisterCodec) -> None:
    """Register codec classes.

    Parameters
    ----------
    register
        Call ``register(codec_class, requires=(), extra=None)`` once per codec. The name is
        ``codec_class.codec_id``. ``requires`` lists the modules the codec imports (lazily,
        on use); when one is missing, the name is still registered and using it raises
        :class:`~splitdataloader.errors.MissingPluginError` with the command that installs
        it: ``pip install "<distribution>[<extra>]"`` when ``extra`` is given (the
        distribution is the one that ships the plugin's entry point), else
        ``pip install <module>``.
    """


@hookspec
def splitdataloader_register_key_providers(register: RegisterKeyProvider) -> None:
    """Register key provider classes.

    Parameters
    ----------
    register
        Call ``register(provider_class, requires=(), extra=None)`` once per provider; the
        name is ``provider_class.provider_id``. ``requires`` and ``extra`` as for codecs.
    """


@hookspec
def splitdataloader_register_backends(register: RegisterBackend) -> None:
    """Register storage backends by URL scheme.

    Parameters
    ----------
    register
        Call ``register(scheme, factory, requires=(), extra=None)`` once per scheme. A
        dataset URL ``<scheme>://...`` (or a chained URL whose first protocol is
        ``<scheme>``) is then opened with ``factory(url, storage_options)``, which returns
        ``(filesystem, root)``: an fsspec filesystem and the dataset's root path inside it.
        A URL whose scheme is ``a+b`` uses the backend of ``a+b`` if there is one, else
        that of ``a`` (so ``retry+s3://...`` reaches the ``retry`` backend). Schemes that
        no plugin claims go to fsspec unchanged.
    """
