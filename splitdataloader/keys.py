"""Keys for codecs: the class a key-provider plugin implements and the ring that asks them.

This module owns :class:`KeyProvider` (supplies key bytes by key id: an environment
variable, a key file, a KMS...) and :class:`KeyRing` (the keys available at run time:
given directly, then asked of providers in order, cached; a provider a dataset names but
the user did not configure is made with default options from the registry). Key bytes
never appear in a repr or an error message; only key ids do. It implements no provider
(those come from plugins, through :mod:`splitdataloader.plugins`) and no codec: codecs get
a ring through :class:`~splitdataloader.codecs.CodecEnvironment`. Both classes are also
importable from :mod:`splitdataloader.codecs`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from . import plugins
from .errors import CodecConfigError, KeyUnavailableError

__all__ = ["KeyProvider", "KeyRing"]


class KeyProvider(abc.ABC):
    """Supplies keys by key id (an environment variable, a key file, a KMS...).

    Subclasses set :attr:`provider_id` and implement :meth:`get_key`; those with options
    take them as keyword arguments in ``__init__``. A key provider is made with no options
    when a dataset names it and the user configured none.

    Parameters
    ----------
    **options
        Provider-specific options; this base class accepts none.
    """

    provider_id: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        if options:
            raise CodecConfigError(
                f"key provider {self.provider_id!r} takes no options, got {sorted(options)}"
            )

    @abc.abstractmethod
    def get_key(self, key_id: str) -> bytes:
        """The key for ``key_id``.

        Raises
        ------
        KeyUnavailableError
            This provider has no key for ``key_id``; the message must not contain key
            material.
        """

    def __repr__(self) -> str:
        # Options may hold credentials: show none of them.
        return f"{type(self).__name__}()"


class KeyRing:
    """The keys available at run time, by key id: given directly, or from key providers.

    Parameters
    ----------
    keys
        Keys given directly, ``{key_id: key bytes}``; they win over every provider.
    providers
        Key providers asked in order for key ids not in ``keys``.

    Notes
    -----
    Key bytes never appear in the repr or in an error message; only key ids do.
    """

    __slots__ = ("_cache", "_defaults", "_keys", "_providers")

    def __init__(
        self,
        keys: Mapping[str, bytes] | None = None,
        providers: Sequence[KeyProvider] = (),
    ) -> None:
        self._keys: dict[str, bytes] = {}
        for key_id, key in (keys or {}).items():
            if not isinstance(key_id, str) or not key_id:
                raise KeyUnavailableError("a key id must be a non-empty string")
            if not isinstance(key, (bytes, bytearray, memoryview)):
                raise KeyUnavailableError(
                    f"the key for key id {key_id!r} must be bytes, not {type(key).__name__}"
                )
            self._keys[key_id] = bytes(key)
        providers = tuple(providers)
        for provider in providers:
            if not isinstance(provider, KeyProvider):
                raise KeyUnavailableError(
                    f"key providers must be KeyProvider instances, not {type(provider).__name__}"
                )
        self._providers = providers
        self._defaults: dict[str, KeyProvider] = {}
        self._cache: dict[tuple[str | None, str], bytes] = {}

    @property
    def providers(self) -> tuple[KeyProvider, ...]:
        """The configured key providers, in the order they are asked."""
        return self._providers

    def key_ids(self) -> list[str]:
        """The ids of the keys given directly (providers are only asked on demand)."""
        return sorted(self._keys)

    def get(self, key_id: str, provider: str | None = None) -> bytes:
        """The key for ``key_id``.

        Parameters
        ----------
        key_id
            The key id a codec config names.
        provider
            The provider id the config names, if any: only providers with that id are
            asked, and when the ring has none, one is made with default options from the
            registered key providers.

        Returns
        -------
        bytes
            The key.

        Raises
        ------
        KeyUnavailableError
            No given key and no provider has it; the message names the key id and the
            providers asked, never key bytes.
        MissingPluginError
            ``provider`` names a key provider that no installed plugin provides.
        """
        key = self._keys.get(key_id)
        if key is not None:
            return key
        cached = self._cache.get((provider, key_id))
        if cached is not None:
            return cached
        candidates = [p for p in self._providers if provider in (None, p.provider_id)]
        if provider is not None and not candidates:
            default = self._defaults.get(provider)
            if default is None:
                default = plugins.key_provider_class(provider)()
                self._defaults[provider] = default
            candidates = [default]
        reasons = []
        for candidate in candidates:
            try:
                found = candidate.get_key(key_id)
            except KeyUnavailableError as err:
                reasons.append(f"{candidate.provider_id}: {err}")
                continue
            if not isinstance(found, (bytes, bytearray, memoryview)):
                raise KeyUnavailableError(
                    f"key provider {candidate.provider_id!r} returned "
                    f"{type(found).__name__} for key id {key_id!r}, not bytes"
                )
            found = bytes(found)
            self._cache[(provider, key_id)] = found
            return found
        if reasons:
            raise KeyUnavailableError(f"no key for key id {key_id!r} ({'; '.join(reasons)})")
        raise KeyUnavailableError(
            f"no key for key id {key_id!r}: none was given and no key provider is configured"
        )

    def __repr__(self) -> str:
        ids = [p.provider_id for p in self._providers]
        return f"KeyRing(key_ids={self.key_ids()!r}, providers={ids!r})"
