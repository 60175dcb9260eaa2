"""The plugin manager: finds plugins, runs their registration hooks, owns the registries.

This is the only module that loads plugins. On first use (never at import) it builds one
:class:`pluggy.PluginManager`, loads every entry point of the ``splitdataloader`` group
that the environment allows, calls ``check_pending()`` so that a misspelled hook fails at
once, then runs the registration hooks of :mod:`splitdataloader.hookspecs` one plugin at a
time, so that two plugins claiming one name raise :class:`PluginConflictError` naming
both. A name whose optional dependency is missing is registered anyway and raises
:class:`MissingPluginError`, with the exact ``pip install`` command, when it is used.
The result is cached per process (a forked child builds its own).

Environment variables, read when the manager is built:

``SPLITDATALOADER_PLUGINS``
    Comma-separated allow-list: only these entry points load (unset or empty: all).
``SPLITDATALOADER_DISABLE_PLUGINS``
    Comma-separated block-list: these entry points never load.

Both match an entry point's name or its distribution's name.
What the codecs, key providers and backends do is not this module's business.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .errors import MissingPluginError, PluginConflictError, PluginError

if TYPE_CHECKING:
    from .codecs import Codec
    from .hookspecs import BackendFactory
    from .keys import KeyProvider

logger = logging.getLogger(__name__)

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "Registration",
    "backend_factory",
    "codec_class",
    "get_plugin_manager",
    "key_provider_class",
    "register_plugin",
    "registered_backends",
    "registered_codecs",
    "registered_key_providers",
    "reset_plugins",
    "unregister_plugin",
]

#: The entry-point group plugins are found in.
ENTRY_POINT_GROUP = "splitdataloader"
#: Allow-list environment variable.
PLUGINS_ENV = "SPLITDATALOADER_PLUGINS"
#: Block-list environment variable.
DISABLE_ENV = "SPLITDATALOADER_DISABLE_PLUGINS"
#: The distribution that plugins registered without an entry point are counted in.
_CORE_DISTRIBUTION = "splitdataloader"

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")

T = TypeVar("T")


@dataclass(frozen=True)
class Registration(Generic[T]):
    """One registered name: what provides it and whether it can be used.

    Attributes
    ----------
    name
        The codec id, key provider id or URL scheme.
    value
        The codec class, key provider class or backend factory.
    plugin
        Who registered it: ``"<entry point> (<distribution> <version>)"``.
    requires
        The modules it needs.
    missing
        Those of ``requires`` that cannot be imported; empty when it is usable.
    install
        The command that installs what is missing (empty when nothing is).
    """

    name: str
    value: T
    plugin: str
    requires: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    install: str = ""

    @property
    def available(self) -> bool:
        """Whether every required module is importable."""
        return not self.missing


@dataclass
class _PluginInfo:
    name: str
    distribution: str
    version: str

    def describe(self) -> str:
        if self.version:
            return f"{self.name!r} ({self.distribution} {self.version})"
        return f"{self.name!r} ({self.distribution})"


@dataclass
class _State:
    manager: pluggy.PluginManager
    codecs: dict[str, Registration[type[Codec]]] = field(default_factory=dict)
    key_providers: dict[str, Registration[type[KeyProvider]]] = field(default_factory=dict)
    backends: dict[str, Registration[BackendFactory]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


_state: tuple[int, _State] | None = None
_lock = threading.RLock()
#: Plugins added with :func:`register_plugin`: (object, name), loaded after entry points.
_extra_plugins: list[tuple[object, str]] = []


def _reinit_lock() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _lock  # noqa: PLW0603 - the lock is module state by design
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_lock)


# -- building


def _env_names(variable: str) -> set[str] | None:
    raw = os.environ.get(variable, "")
    names = {_normalise(part) for part in raw.split(",") if part.strip()}
    return names or None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _entry_points() -> Iterator[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    # Sort for a deterministic load order whatever the order of sys.path entries.
    yield from sorted(found, key=lambda ep: (ep.name, _dist_name(ep)))


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return str(dist.metadata["Name"]) if dist is not None else ""


def _load_entry_points(manager: pluggy.PluginManager, state: _State) -> dict[str, _PluginInfo]:
    allow = _env_names(PLUGINS_ENV)
    block = _env_names(DISABLE_ENV) or set()
    infos: dict[str, _PluginInfo] = {}
    for ep in _entry_points():
        dist = _dist_name(ep)
        version = ep.dist.version if ep.dist is not None else ""
        keys = {_normalise(ep.name), _normalise(dist)}
        if (allow is not None and not keys & allow) or keys & block:
            logger.debug("plugin %r (%s) skipped by the environment", ep.name, dist)
            state.skipped.append(ep.name)
            continue
        info = _PluginInfo(ep.name, dist, version)
        if ep.name in infos:
            raise PluginConflictError(
                f"two plugins use the entry point name {ep.name!r}: "
                f"{infos[ep.name].describe()} and {info.describe()}; uninstall one, or block "
                f"one with {DISABLE_ENV}"
            )
        try:
            plugin = ep.load()
        except Exception as err:
            raise PluginError(
                f"plugin {info.describe()} failed to load ({type(err).__name__}: {err}); "
                f"fix or uninstall it, or set {DISABLE_ENV}={ep.name}"
            ) from err
        if manager.is_registered(plugin):
            logger.debug("plugin %r is already registered under another name", ep.name)
            continue
        manager.register(plugin, name=ep.name)
        infos[ep.name] = info
        logger.debug("loaded plugin %s", info.describe())
    for plugin, name in _extra_plugins:
        if name in infos:
            raise PluginConflictError(
                f"two plugins use the name {name!r}: {infos[name].describe()} and one "
                "added with register_plugin()"
            )
        manager.register(plugin, name=name)
        infos[name] = _PluginInfo(name, _CORE_DISTRIBUTION, "")
    return infos


def _check_pending(manager: pluggy.PluginManager, infos: dict[str, _PluginInfo]) -> None:
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as err:
        name = manager.get_name(err.plugin) or repr(err.plugin)
        who = infos[name].describe() if name in infos else repr(name)
        raise PluginError(
            f"plugin {who} implements a hook that does not exist ({err}); the hooks are "
            f"{', '.join(sorted(_hook_names()))}"
        ) from err


def _hook_names() -> list[str]:
    return [name for name in vars(hookspecs) if name.startswith("splitdataloader_register_")]


def _install_hint(missing: tuple[str, ...], extra: str | None, distribution: str) -> str:
    if not missing:
        return ""
    if extra:
        return f'pip install "{distribution}[{extra}]"'
    return "pip install " + " ".join(sorted({module.split(".")[0] for module in missing}))


def _missing_modules(requires: tuple[str, ...]) -> tuple[str, ...]:
    missing = []
    for module in requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return tuple(missing)


def _check_requires(requires: object, extra: object, who: str) -> tuple[str, ...]:
    if isinstance(requires, str) or not isinstance(requires, (tuple, list)):
        raise PluginError(f"plugin {who}: requires= must be a tuple of module names")
    if not all(isinstance(module, str) and module for module in requires):
        raise PluginError(f"plugin {who}: requires= must be a tuple of module names")
    if extra is not None and (not isinstance(extra, str) or not extra):
        raise PluginError(f"plugin {who}: extra= must be a non-empty string or None")
    return tuple(requires)


def _add(
    registry: dict[str, Registration[Any]],
    *,
    kind: str,
    name: str,
    value: object,
    info: _PluginInfo,
    requires: tuple[str, ...],
    extra: str | None,
) -> None:
    who = info.describe()
    if name in registry:
        raise PluginConflictError(
            f"the {kind} {name!r} is registered by two plugins: {registry[name].plugin} and "
            f"{who}; uninstall one, or block one with {DISABLE_ENV}"
        )
    missing = _missing_modules(requires)
    registry[name] = Registration(
        name=name,
        value=value,
        plugin=who,
        requires=requires,
        missing=missing,
        install=_install_hint(missing, extra, info.distribution),
    )


def _class_name(registered: object, base: type, attribute: str, who: str) -> str:
    """The name a registered class declares in ``attribute``, after checking both."""
    if not (isinstance(registered, type) and issubclass(registered, base)):
        raise PluginError(f"plugin {who} registered {registered!r}, not a {base.__name__} subclass")
    name = getattr(registered, attribute, None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"plugin {who}: {registered.__qualname__}.{attribute} must be a lowercase name "
            f"matching {_NAME.pattern!r}, not {name!r}"
        )
    return name


def _registrars(
    state: _State, info: _PluginInfo
) -> tuple[hookspecs.RegisterCodec, hookspecs.RegisterKeyProvider, hookspecs.RegisterBackend]:
    from .codecs import Codec  # noqa: PLC0415 - codecs imports this module
    from .keys import KeyProvider  # noqa: PLC0415 - keys imports this module

    who = info.describe()

    def register_codec(
        codec_class: type[Codec], *, requires: tuple[str, ...] = (), extra: str | None = None
    ) -> None:
        codec_id = _class_name(codec_class, Codec, "codec_id", who)
        if getattr(codec_class, "kind", None) not in ("compression", "encryption"):
            raise PluginError(
                f"plugin {who}: {codec_class.__qualname__}.kind must be 'compression' or "
                "'encryption'"
            )
        needs = _check_requires(requires, extra, who)
        _add(
            state.codecs,
            kind="codec",
            name=codec_id,
            value=codec_class,
            info=info,
            requires=needs,
            extra=extra,
        )

    def register_key_provider(
        provider_class: type[KeyProvider],
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
    ) -> None:
        provider_id = _class_name(provider_class, KeyProvider, "provider_id", who)
        needs = _check_requires(requires, extra, who)
        _add(
            state.key_providers,
            kind="key provider",
            name=provider_id,
            value=provider_class,
            info=info,
            requires=needs,
            extra=extra,
        )

    def register_backend(
        scheme: str,
        factory: BackendFactory,
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
    ) -> None:
        if not isinstance(scheme, str) or not _SCHEME.match(scheme):
            raise PluginError(
                f"plugin {who}: a backend scheme must be lowercase and match "
                f"{_SCHEME.pattern!r}, not {scheme!r}"
            )
        if not callable(factory):
            raise PluginError(f"plugin {who}: the factory of scheme {scheme!r} is not callable")
        needs = _check_requires(requires, extra, who)
        _add(
            state.backends,
            kind="backend scheme",
            name=scheme,
            value=factory,
            info=info,
            requires=needs,
            extra=extra,
        )

    return register_codec, register_key_provider, register_backend


def _run_registrations(
    manager: pluggy.PluginManager, state: _State, infos: dict[str, _PluginInfo]
) -> None:
    plugins = manager.list_name_plugin()
    for name, plugin in plugins:
        if plugin is None:
            continue
        info = infos.get(name, _PluginInfo(name, _CORE_DISTRIBUTION, ""))
        codec, provider, backend = _registrars(state, info)
        others = [other for _, other in plugins if other is not None and other is not plugin]
        calls: list[tuple[str, Callable[..., Any]]] = [
            ("splitdataloader_register_codecs", codec),
            ("splitdataloader_register_key_providers", provider),
            ("splitdataloader_register_backends", backend),
        ]
        for hook_name, register in calls:
            # One plugin at a time, so that every name is attributed to its plugin.
            manager.subset_hook_caller(hook_name, remove_plugins=others)(register=register)


def _build() -> _State:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    state = _State(manager)
    infos = _load_entry_points(manager, state)
    _check_pending(manager, infos)
    _run_registrations(manager, state, infos)
    logger.debug(
        "plugins: codecs %s, key providers %s, backends %s",
        sorted(state.codecs),
        sorted(state.key_providers),
        sorted(state.backends),
    )
    return state


def _get_state() -> _State:
    global _state  # noqa: PLW0603 - the per-process cache is module state by design
    pid = os.getpid()
    current = _state
    if current is not None and current[0] == pid:
        return current[1]
    with _lock:
        current = _state
        if current is not None and current[0] == pid:
            return current[1]
        built = _build()
        _state = (pid, built)
        return built


# -- public API


def get_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager, built on first use.

    Returns
    -------
    pluggy.PluginManager
        The manager with every allowed plugin loaded and its registrations run.

    Raises
    ------
    PluginError
        A plugin failed to load or implements a hook that does not exist.
    PluginConflictError
        Two plugins claim one entry-point name, codec id, key provider id or scheme.
    """
    return _get_state().manager


def reset_plugins() -> None:
    """Forget the cached plugin manager; the next use rebuilds it from the entry points.

    For tests and for programs that change ``sys.path`` or the environment variables.
    """
    global _state  # noqa: PLW0603 - the per-process cache is module state by design
    with _lock:
        _state = None
    importlib.invalidate_caches()


def register_plugin(plugin: object, name: str) -> None:
    """Add a plugin object without an entry point (for applications and tests).

    It is loaded after the entry points, survives :func:`reset_plugins` and forks, and
    obeys the same duplicate rules. The environment variables do not apply to it.

    Parameters
    ----------
    plugin
        A module or object holding :data:`~splitdataloader.hookspecs.hookimpl` functions.
    name
        Its plugin name, unique among plugins.
    """
    if not isinstance(name, str) or not name:
        raise PluginError("a plugin name must be a non-empty string")
    with _lock:
        if any(existing == name for _, existing in _extra_plugins):
            raise PluginConflictError(f"a plugin named {name!r} was already added")
        _extra_plugins.append((plugin, name))
    reset_plugins()


def unregister_plugin(name: str) -> None:
    """Remove a plugin added with :func:`register_plugin` (no error if there is none)."""
    with _lock:
        _extra_plugins[:] = [(p, n) for p, n in _extra_plugins if n != name]
    reset_plugins()


def _lookup(
    registry: dict[str, Registration[T]], kind: str, name: str, skipped: Iterable[str]
) -> T:
    registration = registry.get(name)
    if registration is None:
        known = ", ".join(sorted(registry)) or "none"
        message = (
            f"no plugin provides the {kind} {name!r} (installed: {known}); install the "
            f"package that provides it"
        )
        skipped = list(skipped)
        if skipped:
            message += (
                f" (plugins skipped because of {PLUGINS_ENV}/{DISABLE_ENV}: {', '.join(skipped)})"
            )
        raise MissingPluginError(message)
    if registration.missing:
        raise MissingPluginError(
            f"the {kind} {name!r} needs {', '.join(registration.missing)}, which is not "
            f"installed: {registration.install}"
        )
    return registration.value


def codec_class(codec_id: str) -> type[Codec]:
    """The codec class registered under ``codec_id``.

    Parameters
    ----------
    codec_id
        The id recorded in a codec config, e.g. ``"zstd"``.

    Returns
    -------
    type[Codec]
        The class; build an instance with its ``from_config``.

    Raises
    ------
    MissingPluginError
        No plugin provides ``codec_id``, or its optional dependency is not installed (the
        message holds the ``pip install`` command).
    """
    state = _get_state()
    return _lookup(state.codecs, "codec", codec_id, state.skipped)


def key_provider_class(provider_id: str) -> type[KeyProvider]:
    """The key provider class registered under ``provider_id``.

    Raises
    ------
    MissingPluginError
        As for :func:`codec_class`.
    """
    state = _get_state()
    return _lookup(state.key_providers, "key provider", provider_id, state.skipped)


def backend_factory(scheme: str) -> BackendFactory | None:
    """The backend factory for a URL scheme, or ``None`` to let fsspec handle the URL.

    Parameters
    ----------
    scheme
        The part of the URL before ``://`` (or the first protocol of a chained URL). For
        ``a+b``, a backend registered as ``a+b`` wins, else the one registered as ``a``.

    Returns
    -------
    BackendFactory or None
        ``factory(url, storage_options) -> (filesystem, root)``.

    Raises
    ------
    MissingPluginError
        The scheme's plugin needs a module that is not installed.
    """
    scheme = scheme.lower()
    backends = _get_state().backends
    candidates = [scheme]
    if "+" in scheme:
        candidates.append(scheme.split("+", 1)[0])
    for candidate in candidates:
        if candidate in backends:
            return _lookup(backends, "backend scheme", candidate, ())
    return None


def registered_codecs() -> dict[str, Registration[type[Codec]]]:
    """Every registered codec id, usable or not (see :attr:`Registration.available`)."""
    return dict(_get_state().codecs)


def registered_key_providers() -> dict[str, Registration[type[KeyProvider]]]:
    """Every registered key provider id, usable or not."""
    return dict(_get_state().key_providers)


def registered_backends() -> dict[str, Registration[BackendFactory]]:
    """Every registered backend scheme, usable or not."""
    return dict(_get_state().backends)
