"""Provider configuration at runtime: named instances, the default, the fallback chain and the breakers'
thresholds, kept in the store and applied without a restart.

On the first start with a data_dir, the store is seeded from ServerSettings (``providers``,
``default_provider``, ``fallback_chain``, ``routing``); from then on **the store is the source**, and those
settings are ignored (change them with the admin API or ``execbox config set``). Everything is validated
before it is stored. Secret settings (the kind's ``SecretStr`` fields) are sealed with the server key
(secretbox.py) and never leave this module in clear but to the provider itself.

The server and the CLI share this class: the CLI writes the store of a data_dir; a running server reads it at
its start (the admin API changes a running server at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr

from execbox.engine import Engine
from execbox.errors import ExecboxError, NotFoundError, RequestError
from execbox.models import ExecutionRequest, Limits, Status
from execbox.providers.kinds import ProviderKind, secret_fields
from execbox.providers.registry import InstanceConfig, ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings
from execbox.server.secretbox import SecretBox
from execbox.server.settings import ServerSettings
from execbox.store import InstanceRecord, SQLiteStore
from execbox.wire import BreakerInfo
from execbox.wire_admin import MASK, AdminProviders, ChainInfo, InstanceInfo, KindInfo, ProviderTest

log = logging.getLogger("execbox.server")
SEALED = "sealed"  # a stored secret: {"sealed": "<Fernet token>"}
TEST_LIMITS = Limits(wall_time_s=5, cpu_time_s=5, memory_mb=128)
TEST_DEADLINE_S = 30.0  # the whole test, starting the provider included
# The test program, in the first of these languages available here: it prints 1.
PROBES = (("python", "print(1)"), ("bash", "echo 1"), ("javascript", "console.log(1)"), ("ruby", "puts 1"),
          ("php", "<?php echo 1;"))


class ConfigError(ExecboxError):
    """The stored configuration cannot be loaded (the server does not start; the message says the fix)."""


class ConfigConflict(RequestError):
    """The change would leave the configuration naming what is gone (HTTP 409)."""


class ProviderAdmin:
    """The store's provider configuration, applied to a registry and a router that it builds."""

    def __init__(self, settings: ServerSettings, store: SQLiteStore, box: SecretBox | None = None, *,
                 strict: bool = True) -> None:
        """``strict`` (a server): a stored instance that cannot be loaded (its secrets do not open with this
        key, its kind is gone) is an error; otherwise (the CLI, to repair it) it is left out, in ``broken``."""
        self.settings, self.store = settings, store
        self.box = box or SecretBox.for_data_dir(settings.data_dir, settings.secret_key)
        self._seed()
        config = store.server_config()
        self._stored: dict[str, InstanceConfig] = {}
        self.broken: dict[str, str] = {}
        for name, record in store.instances().items():
            try:
                self._stored[name] = self._parse(record)
            except ExecboxError as e:
                why = (f"the stored provider {name!r} cannot be loaded ({e}); set it again with `execbox config "
                       f"set providers.{name} JSON`")
                if strict:
                    raise ConfigError(why) from e
                self.broken[name] = why
        self.registry = ProviderRegistry(default=config.get("default_provider"), configs=self._stored)
        routing = RoutingSettings.model_validate(config["routing"]) if "routing" in config else settings.routing
        self.router = Router(self.registry, config.get("fallback_chain", []), routing)
        if strict:
            self.router.order(None, None)  # a default or chain naming no provider: refused at start, in words

    # --- the store
    def _seed(self) -> None:
        s = self.settings
        instances = {}
        for name, table in s.providers.items():  # validated before storing, as every change is
            parsed = parse_instance(name, str(table.get("kind", "")), {k: v for k, v in table.items()
                                                                        if k != "kind"})
            instances[name] = (parsed.kind, self._sealed(parsed))
        config = {"default_provider": s.default_provider, "fallback_chain": list(s.fallback_chain),
                  "routing": s.routing.model_dump(mode="json")}
        if self.store.seed(instances, config):
            log.info("provider configuration seeded from the settings", extra={"fields": {
                "providers": sorted(instances), "default": s.default_provider, "chain": s.fallback_chain}})
            return
        # seeded before: settings given now that differ from the store are ignored, and the operator is told
        stored = {**self.store.server_config(), "providers": {
            n: (r.kind, _unsealed(r.settings)) for n, r in self.store.instances().items()}}
        config["providers"] = {n: (kind, _unsealed(table)) for n, (kind, table) in instances.items()}
        if ignored := sorted(k for k in s.model_fields_set & config.keys() if config[k] != stored.get(k)):
            log.warning("provider settings ignored: the store is the source since its first start (change them "
                        "with the admin API or `execbox config set`)", extra={"fields": {"ignored": ignored}})

    def _sealed(self, config: InstanceConfig) -> dict[str, Any]:
        """The settings to store: the fields given, secrets sealed."""
        if config.settings is None:
            return {}
        model = config.settings
        secrets = secret_fields(type(model))
        out = model.model_dump(mode="json", exclude_unset=True, exclude=secrets)
        for name in secrets & model.model_fields_set:
            value = getattr(model, name)
            out[name] = None if value is None else {SEALED: self.box.seal(value.get_secret_value())}
        return out

    def _parse(self, record: InstanceRecord) -> InstanceConfig:
        settings = {k: self.box.open(v[SEALED]) if isinstance(v, dict) and set(v) == {SEALED} else v
                    for k, v in record.settings.items()}
        return parse_instance(record.name, record.kind, settings)

    # --- changes
    def stored_names(self) -> list[str]:
        """The instances configured by name (set through settings or the admin API)."""
        return sorted(self._stored)

    def put(self, name: str, kind: str, settings: Mapping[str, Any]) -> InstanceInfo:
        """Add or replace an instance (RequestError naming the bad field); the next request gets it, and a
        replaced one keeps serving its sandboxes until they end."""
        config = parse_instance(name, kind, self._keep_secrets(name, kind, dict(settings)))
        self.store.put_instance(name, kind, self._sealed(config))
        self._stored[name] = config
        self.registry.configure(config)
        self.router.breaker(name).reset()  # a new instance: the old one's faults are not its own
        log.info("provider configured", extra={"fields": {"provider": name, "kind": kind}})
        return self.instance(name)

    def _keep_secrets(self, name: str, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
        """A secret sent back masked keeps the stored value (the same instance and kind only)."""
        known = self.registry.kinds.get(kind)
        if known is None:
            return settings
        old = self._stored.get(name)
        for field in secret_fields(known.settings):
            if settings.get(field) != MASK:
                continue
            value = getattr(old.settings, field, None) if old and old.kind == kind and old.settings else None
            if not isinstance(value, SecretStr):
                raise RequestError(f"provider {name!r} ({kind}): {field}: {MASK!r} keeps the stored secret, "
                                   "but none is stored: send the value")
            settings[field] = value.get_secret_value()
        return settings

    def delete(self, name: str) -> None:
        """Remove a configured instance: ConfigConflict while the default or the chain names it."""
        if name not in self._stored:
            if name in self.registry.names():
                raise ConfigConflict(f"provider {name!r} is the implicit instance of its kind: it cannot be "
                                     "removed (configure it instead)")
            raise NotFoundError(f"no provider instance {name!r}")
        if name == self.registry.default:
            raise ConfigConflict(f"provider {name!r} is the default: choose another default first "
                                 "(PUT /api/v1/admin/chain)")
        if name in self.router.chain:
            raise ConfigConflict(f"provider {name!r} is in the fallback chain: take it out first "
                                 "(PUT /api/v1/admin/chain)")
        self.store.delete_instance(name)
        del self._stored[name]
        self.registry.remove(name)
        log.info("provider removed", extra={"fields": {"provider": name}})

    def set_chain(self, default: str | None = None, chain: Sequence[str] | None = None,
                  routing: RoutingSettings | None = None) -> ChainInfo:
        """Change the default, the chain or the thresholds (None: unchanged); RequestError naming an unknown
        provider or one named twice."""
        default = default if default is not None else self.registry.default
        chain = list(chain) if chain is not None else self.router.chain
        known = self.registry.names()
        for n in [default, *chain]:
            if n not in known:
                raise RequestError(f"unknown provider {n!r}; known: {', '.join(known)}")
        if dupes := sorted({n for n in chain if chain.count(n) > 1}):
            raise RequestError(f"the fallback chain names {dupes[0]!r} twice")
        values: dict[str, Any] = {"default_provider": default, "fallback_chain": chain}
        if routing is not None:
            values["routing"] = routing.model_dump(mode="json")
        self.store.put_config(values)
        self.registry.default = default
        self.router.configure(chain=chain, settings=routing)
        log.info("provider chain set", extra={"fields": {"default": default, "chain": chain}})
        return self.chain()

    def reset(self, name: str) -> BreakerInfo:
        self._known(name)
        breaker = self.router.breaker(name)
        breaker.reset()
        return self._breaker(name)

    # --- views (secrets masked)
    def chain(self) -> ChainInfo:
        return ChainInfo(default=self.registry.default, chain=self.router.chain, routing=self.router.settings)

    def view(self) -> AdminProviders:
        kinds = [self._kind(k) for k in self.registry.kinds.values() if not k.name.startswith("given:")]
        return AdminProviders(default=self.registry.default, chain=self.router.chain, routing=self.router.settings,
                              kinds=kinds, instances=[self.instance(n) for n in self.registry.names()])

    @staticmethod
    def _kind(k: ProviderKind) -> KindInfo:
        missing = k.missing()
        return KindInfo(name=k.name, summary=k.summary, available=missing is None, missing=missing,
                        install=k.install_line, settings_schema=k.schema(), capabilities=k.capabilities,
                        secret_fields=sorted(secret_fields(k.settings)), detect=[list(g) for g in k.detect],
                        detected=None if (found := k.detected()) is None else list(found))

    def instance(self, name: str) -> InstanceInfo:
        config = self._known(name)
        chain = self.router.chain
        return InstanceInfo(name=name, kind=config.kind, configured=name in self._stored,
                            settings=masked(config.settings), is_default=name == self.registry.default,
                            chain_position=chain.index(name) if name in chain else None,
                            breaker=self._breaker(name))

    def _breaker(self, name: str) -> BreakerInfo:
        return BreakerInfo.of(self.router.breaker(name))

    def _known(self, name: str) -> InstanceConfig:
        if name not in self.registry.names():
            raise NotFoundError(f"no provider {name!r}; known: {', '.join(self.registry.names())}")
        return self.registry.config(name)

    # --- a provider's test: one real execution
    async def test(self, engine: Engine, name: str) -> ProviderTest:
        """Run a program that prints 1 on ``name`` alone, under tight limits (its sandbox is removed by the
        engine, as every run's is). A failure is the answer, in words: never raised."""
        self._known(name)
        language, code = next(((lang, src) for lang, src in PROBES if _available(engine, lang)), PROBES[0])
        request = ExecutionRequest(language=language, code=code, provider=name, limits=TEST_LIMITS)
        start = time.monotonic()
        ok, message = False, ""
        try:
            result = await asyncio.wait_for(engine.execute(request), TEST_DEADLINE_S)
        except TimeoutError:
            message = f"no result within {TEST_DEADLINE_S:g} s (starting the provider included)"
        except ExecboxError as e:
            message = str(e)
        except Exception as e:  # a provider's bug: reported in words, logged with its traceback
            log.exception("provider test failed", extra={"fields": {"provider": name}})
            message = f"unexpected {type(e).__name__}: {e}"
        else:
            printed = result.stdout.strip()
            if result.status is not Status.OK:
                detail = result.message or result.stderr.strip()[-300:] or f"exit code {result.exit_code}"
                message = f"the test program ended {result.status.value}: {detail}"
            elif printed != "1":
                message = f"the test program ran but printed {printed[:100]!r}, not '1'"
            else:
                ok, message = True, f"{language} ran and printed 1"
        if not ok and not message.startswith(f"provider {name!r}"):  # say which, whatever the error's words
            message = f"provider {name!r}: {message}"
        wall_ms = round((time.monotonic() - start) * 1000, 1)
        log.info("provider tested", extra={"fields": {"provider": name, "ok": ok, "wall_ms": wall_ms}})
        return ProviderTest(ok=ok, provider=name, language=language, wall_ms=wall_ms, message=message)


def _unsealed(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings to compare: every sealed secret alike (each sealing differs)."""
    return {k: SEALED if isinstance(v, dict) and set(v) == {SEALED} else v for k, v in settings.items()}


def _available(engine: Engine, language: str) -> bool:
    try:
        return engine.languages.get(language).available
    except RequestError:
        return False


def masked(settings: BaseModel | None) -> dict[str, Any]:
    """The settings given, secrets as MASK when set (None when set to nothing)."""
    if settings is None:
        return {}
    secrets = secret_fields(type(settings))
    out = settings.model_dump(mode="json", exclude_unset=True, exclude=secrets)
    for name in secrets & settings.model_fields_set:
        out[name] = None if getattr(settings, name) is None else MASK
    return out


def check_config(settings: ServerSettings) -> None:
    """Load the store's configuration once (seeding it on the first start): ExecboxError, in words, for what
    would stop a server from starting."""
    store = SQLiteStore(settings.db_path)
    try:
        ProviderAdmin(settings, store)
    finally:
        store.close()
