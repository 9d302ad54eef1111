"""request -> steps -> provider calls -> result: the only module that knows both languages and providers."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from execbox.errors import ExecboxError, InvalidFileError, OutcomeUnknown, RequestError, SandboxError
from execbox.languages import Language, LanguageRegistry, Step, default_registry
from execbox.models import ExecutionRequest, ExecutionResult, Limits, Policy, Status, StepResult
from execbox.providers.base import (
    ExecSpec,
    Instance,
    InstanceSpec,
    LiveInput,
    OutputChunk,
    ProcessOutcome,
    Provider,
    StopReason,
)
from execbox.providers.kinds import RequestRunner
from execbox.providers.registry import ProviderRegistry
from execbox.routing import NotHandedOver, Router, env_chain, handed_over_error

log = logging.getLogger("execbox.engine")
ARGS_FILE = ".execbox_args.json"
RETURN_FILE = ".execbox_return.json"
MAX_RETURN_BYTES = 16 * 1024 * 1024
MAX_RETURN_DEPTH = 64
MAX_ARGV_ENV_BYTES = 1024 * 1024  # well under the kernel's ARG_MAX, leaving room for the sandbox's own argv

_STOP_STATUS = {
    StopReason.WALL_TIME: (Status.TIMEOUT, "wall time limit of {wall}s exceeded"),
    StopReason.CPU_TIME: (Status.TIMEOUT, "CPU time limit of {cpu}s exceeded"),
    StopReason.MEMORY: (Status.MEMORY_LIMIT, "memory limit of {mem} MiB exceeded"),
    StopReason.OUTPUT: (Status.OUTPUT_LIMIT, "output limit of {out} bytes per stream exceeded"),
    StopReason.CANCELLED: (Status.KILLED, "cancelled"),
}


@dataclass(frozen=True)
class StageEvent:
    """What an interactive run reports as it goes: a stage begins, output of a stage, a stage's end."""

    kind: str  # "stage" | "data" | "exit"
    stage: str  # "compile" | "run"
    stream: str | None = None  # data: "stdout" | "stderr"
    data: bytes = b""
    step: StepResult | None = None  # exit


Runner = Callable[[ExecSpec, str], Awaitable[ProcessOutcome]]  # (spec, stage) -> outcome


Emit = Callable[[StageEvent], Awaitable[None]]


@contextlib.contextmanager
def provider_errors(provider: str, doing: str = "failed", *, handed_over: bool = False) -> Iterator[None]:
    """execbox's own errors pass; any other exception is a provider bug or a host failure: the sandbox's
    fault, mapped here (the one place) to SandboxError. Once the user's code was ``handed_over`` (it may have
    run), every provider failure is OutcomeUnknown, whatever its class ("unavailable" or "busy" said after
    the hand-over must not let anyone run the code again); only a RequestError (the program could not be
    started as asked, e.g. its arguments too long) keeps its own."""
    try:
        yield
    except (OutcomeUnknown, RequestError):
        raise
    except ExecboxError as e:
        if handed_over:
            raise handed_over_error(provider, e) from e
        raise
    except Exception as e:
        if handed_over:
            raise handed_over_error(provider, e) from e
        raise SandboxError(f"provider {provider!r} {doing}: {e}") from e


async def close_logged(instance: Instance, provider: str) -> None:
    """Close ``instance``; a failure is logged (what it held may be left behind), not raised."""
    try:
        await instance.close()
    except Exception as e:
        log.error("instance cleanup failed", extra={"fields": {"provider": provider, "error": str(e)}})


def tightened(caps: Limits, limits: Limits | None) -> Limits:
    """``caps`` with each field that ``limits`` sets lowered to it, never raised (a sandbox's caps bound its
    execs and runs; its disk and network are the sandbox's, not a run's)."""
    if limits is None:
        return caps
    return caps.model_copy(update={k: min(getattr(limits, k), getattr(caps, k)) for k in limits.model_fields_set
                                   if k not in ("disk_mb", "network")})


def exec_spec(limits: Limits, argv: tuple[str, ...], *, compile: bool = False, stdin: bytes = b"",
              env: Mapping[str, str] | None = None, cwd: str = ".", output_bytes: int | None = None) -> ExecSpec:
    """The one translation of Limits into a process's limits: a compile step has the compile wall time (and
    as much CPU time), a run the wall and CPU times; ``output_bytes`` (a step's own cap) only lowers."""
    wall = limits.compile_wall_time_s if compile else limits.wall_time_s
    return ExecSpec(
        argv=argv, wall_time_s=wall, cpu_time_s=wall if compile else limits.cpu_time_s,
        memory_mb=limits.memory_mb, pids=limits.pids,
        output_bytes=min(output_bytes or limits.output_bytes, limits.output_bytes),
        file_size_mb=limits.file_size_mb, open_files=limits.open_files, stdin=stdin, env=dict(env or {}), cwd=cwd,
    )


def _live_runner(instance: Instance, live: LiveInput, emit: Emit) -> Runner:
    """Runs steps streamed: each stage's start, output and end emitted; the run step reads ``live``."""
    async def run(spec: ExecSpec, stage: str) -> ProcessOutcome:
        await emit(StageEvent("stage", stage))
        outcome: ProcessOutcome | None = None
        async for item in instance.stream(replace(spec, live=live) if stage == "run" else spec):
            if isinstance(item, OutputChunk):
                await emit(StageEvent("data", stage, item.stream, item.data))
            else:
                outcome = item
        assert outcome is not None  # a stream ends with its outcome
        await emit(StageEvent("exit", stage, step=step_result(outcome, spec)))
        return outcome
    return run


def step_result(o: ProcessOutcome, spec: ExecSpec) -> StepResult:
    status, message = Status.OK, None
    if o.stopped_by is not None:
        status, template = _STOP_STATUS[o.stopped_by]
        message = template.format(wall=spec.wall_time_s, cpu=spec.cpu_time_s, mem=spec.memory_mb,
                                  out=spec.output_bytes)
    elif o.exit_code != 0:
        status = Status.RUNTIME_ERROR
        message = f"killed by signal {o.signal}" if o.signal else f"exited with code {o.exit_code}"
        if o.signal == 25:  # SIGXFSZ
            message = f"file size limit of {spec.file_size_mb} MiB exceeded"
    return StepResult(
        status=status, exit_code=o.exit_code, signal=o.signal,
        stdout=o.stdout.decode("utf-8", "replace"), stderr=o.stderr.decode("utf-8", "replace"),
        stdout_truncated=o.stdout_truncated, stderr_truncated=o.stderr_truncated,
        wall_time_s=round(o.wall_time_s, 6), cpu_time_s=None if o.cpu_time_s is None else round(o.cpu_time_s, 6),
        max_rss_mb=None if o.max_rss_mb is None else round(o.max_rss_mb, 3), message=message,
    )


class Engine:
    """Runs ExecutionRequests: resolves the language, clamps limits by policy, drives a provider."""

    def __init__(self, providers: ProviderRegistry | None = None, languages: LanguageRegistry | None = None,
                 policy: Policy | None = None, router: Router | None = None,
                 chain: Sequence[str] | None = None) -> None:
        """``chain``: the providers tried after the default when it fails before the code is handed over
        (default: EXECBOX_FALLBACK_CHAIN, comma-separated); ``router`` replaces both (a server's)."""
        self.providers = providers or ProviderRegistry()
        self.languages = languages or default_registry()
        self.policy = policy or Policy()
        self.router = router or Router(self.providers, env_chain() if chain is None else chain)

    def check(self, request: ExecutionRequest, policy: Policy | None = None) -> Language:
        """The request's language, or the RequestError that ``execute`` would raise before running anything
        (unknown language or version, arguments it cannot take, a missing test command, unusable files)."""
        return self._prepare(request, (policy or self.policy).apply(request.limits))[0]

    def _prepare(self, request: ExecutionRequest, limits: Limits
                 ) -> tuple[Language, dict[str, bytes], str, Step | None]:
        lang = self.languages.get(request.language)
        self.check_version(lang, request.version)
        if request.command == "test" and lang.test is None:
            raise RequestError(f"{lang.name} has no test command")
        if request.args and "{args}" not in self._main_step(lang, request).command:
            raise RequestError(f"{lang.name} programs take no command-line arguments")
        argv_env = sum(len(a.encode()) + 1 for a in request.args) + sum(
            len(k.encode()) + len(v.encode()) + 2 for k, v in request.env.items())
        if argv_env > MAX_ARGV_ENV_BYTES:
            raise RequestError(f"arguments and environment take {argv_env} bytes; the maximum is "
                               f"{MAX_ARGV_ENV_BYTES} (pass large data through stdin or files)")
        return (lang, *self._files(request, lang, limits))

    @staticmethod
    def _main_step(lang: Language, request: ExecutionRequest) -> Step:
        return lang.test if request.command == "test" and lang.test is not None else lang.run

    @staticmethod
    def instance_spec(limits: Limits, steps: Sequence[Step | None] = (), *, persistent: bool = False
                      ) -> InstanceSpec:
        """What an instance is started with: its disk, network and the binaries of ``steps`` (a provider whose
        environment depends on them, docker's images, checks or picks it at the start: before the code is
        handed over); a persistent one also caps everything alive in it (a one-shot one's processes each have
        their own limits)."""
        spec = InstanceSpec(disk_mb=limits.disk_mb, network=limits.network,
                            binaries=tuple(s.command[0] for s in steps if s is not None))
        if not persistent:
            return spec
        return replace(spec, persistent=True, memory_mb=limits.memory_mb, pids=limits.pids)

    @staticmethod
    async def start(provider: Provider, spec: InstanceSpec) -> Instance:
        """A new instance of ``provider`` (one-shot or persistent, as ``spec`` says)."""
        with provider_errors(provider.name, "failed to start"):
            return await provider.start(spec)

    async def execute(self, request: ExecutionRequest, policy: Policy | None = None,
                      execution_id: str | None = None, *, live: tuple[LiveInput, Emit] | None = None,
                      on_handover: Callable[[], object] | None = None) -> ExecutionResult:
        """Run ``request``. ``policy`` (default: the engine's) sets the limits' defaults and maxima, so a
        server can cap each API key differently; ``execution_id`` names the run (default: a new uuid).
        With ``live`` (input, emit) the run is interactive: its run step reads the input as its stdin (and
        takes its signals) instead of ``request.stdin``, and each stage's start, output and end are emitted
        as they happen; it needs a provider whose persistent instances take live input (local, docker).
        The provider is the pinned one or the first of the default and the fallback chain that can take it
        (``Router.first``); ``on_handover`` is called just before the code is handed to it (a job records
        it: from then on it is never run again on its own)."""
        limits = (policy or self.policy).apply(request.limits)
        lang, files, entry, build = self._prepare(request, limits)
        execution_id = execution_id or uuid.uuid4().hex
        asked = request.limits.model_fields_set if request.limits is not None else set()
        # interactive: a persistent instance, which takes live input
        steps = (build if request.command == "run" else None, self._main_step(lang, request))
        spec = self.instance_spec(limits, steps, persistent=live is not None)

        def unfit(name: str) -> str | None:
            return self.providers.capabilities(name).unfit(limits, asked, request, live=live is not None)

        async def attempt(provider: Provider) -> dict[str, object]:
            if isinstance(provider, RequestRunner):  # another server: the whole request, in one call
                if on_handover is not None:
                    on_handover()
                try:
                    ran = await provider.run_request(request.model_copy(update={"provider": None, "fallback": None}),
                                                     limits, execution_id)
                except OutcomeUnknown:
                    raise
                except Exception as e:  # its contract: anything but OutcomeUnknown means it did not run
                    raise NotHandedOver(e) from e
                return ran.model_dump(exclude={"execution_id", "language", "version", "provider",
                                               "provider_attempts"})
            try:
                instance = await self.start(provider, spec)
            except ExecboxError as e:
                raise NotHandedOver(e) from e
            self.router.started(provider.name)
            try:
                try:  # nothing run yet: another provider may still take it
                    if live is not None and not instance.supports_live:
                        raise RequestError(f"provider {provider.name!r} cannot run interactively")
                    with provider_errors(provider.name, "failed to write the files"):
                        await instance.write_files(files)
                except ExecboxError as e:
                    raise NotHandedOver(e) from e
                if on_handover is not None:
                    on_handover()
                with provider_errors(provider.name, handed_over=True):
                    run = None if live is None else _live_runner(instance, *live)
                    return await self._steps(instance, request, lang, limits, files, entry, build, run)
            finally:  # a failed cleanup is the operator's to see, never a reason to lose the run's result
                await close_logged(instance, provider.name)

        names = self.router.order(request.provider, request.fallback)
        result, name, attempts = await self.router.first(names, unfit, attempt)
        return ExecutionResult(execution_id=execution_id, language=lang.name, version=lang.version(),
                               provider=name, provider_attempts=attempts, **result)

    async def start_sandbox(self, spec: InstanceSpec, limits: Limits, asked: Iterable[str], *,
                            provider: str | None = None, fallback: Sequence[str] | None = None,
                            ) -> tuple[Provider, Instance]:
        """A persistent instance on the pinned provider, or on the first of the default and the chain that
        keeps sandboxes, honours ``limits`` and starts (no code is handed over in starting one)."""
        def unfit(name: str) -> str | None:
            return self.providers.capabilities(name).unfit(limits, asked, persistent=True)

        async def attempt(p: Provider) -> tuple[Provider, Instance]:
            if not p.supports_persistent:
                raise NotHandedOver(RequestError(f"provider {p.name!r} cannot keep sandboxes"))
            try:
                return p, await self.start(p, spec)
            except ExecboxError as e:
                raise NotHandedOver(e) from e

        started, _, _ = await self.router.first(self.router.order(provider, fallback), unfit, attempt)
        return started

    async def run_in(self, instance: Instance, request: ExecutionRequest, *, provider: str, caps: Limits,
                     env: Mapping[str, str] | None = None) -> ExecutionResult:
        """Run ``request``'s steps (write its files, compile, run, read main()'s return value) in a live
        instance, a sandbox's: the files stay in its workdir afterwards; the run's limits are ``caps`` (the
        sandbox's) tightened by the request's; ``env`` (the sandbox's) comes under the request's own.
        ``request.provider`` is unused: the instance is ``provider``'s."""
        limits = tightened(caps, request.limits)
        lang, files, entry, build = self._prepare(request, limits)
        with provider_errors(provider, handed_over=True):
            if request.arguments is not None:  # a value left by an earlier run must not pass for this one's
                await instance.remove_file(RETURN_FILE)
            await instance.write_files(files)
            result = await self._steps(instance, request, lang, limits, files, entry, build, base_env=env)
        return ExecutionResult(execution_id=uuid.uuid4().hex, language=lang.name, version=lang.version(),
                               provider=provider, **result)

    @staticmethod
    def check_version(lang: Language, wanted: str | None) -> None:
        """A requested version must match the installed one by prefix ('3', '3.11', '3.11.2'); '*' is any."""
        if wanted in (None, "", "*"):
            return
        have = lang.version()
        if have is None or not (have == wanted or have.startswith(f"{wanted}.")):
            raise RequestError(f"{lang.name} {wanted} is not available; installed: {have or 'none'}")

    def _files(self, request: ExecutionRequest, lang: Language, limits: Limits
               ) -> tuple[dict[str, bytes], str, Step | None]:
        """The files to write (the program's and the language's), the entry file, the compile step."""
        files = {f.name: f.data() for f in request.files}
        if request.code is not None:
            entry = request.entry or lang.entry
            if entry in files:
                raise InvalidFileError(f"file {entry!r} given twice (as code and in files)")
            files[entry] = request.code.encode()
        else:
            entry = request.entry or request.files[0].name
            if entry not in files:
                raise InvalidFileError(f"entry file {entry!r} is not among the files")
        if reserved := lang.reserved() & files.keys():
            raise InvalidFileError(f"file name {sorted(reserved)[0]!r} is reserved by execbox")
        if request.arguments is not None:
            if lang.call_main is None:
                raise RequestError(f"`arguments` (calling main) is not supported for {lang.name}")
            if reserved := {lang.call_main.file, ARGS_FILE} & files.keys():
                raise InvalidFileError(f"file name {sorted(reserved)[0]!r} is reserved by execbox")
            try:
                args_json = json.dumps(request.arguments)
            except (TypeError, ValueError) as e:
                raise RequestError(f"`arguments` cannot be encoded as JSON: {e}") from e
            code = files[entry].decode("utf-8", "replace")
            files[lang.call_main.file] = lang.driver(code, entry).encode()
            files[ARGS_FILE] = args_json.encode()
            entry = lang.call_main.file
        build, support = lang.build(files, entry)
        files.update(support)
        parents = {"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
        if clash := sorted(parents & files.keys()):
            raise InvalidFileError(f"{clash[0]!r} is given both as a file and as a directory of other files")
        size = sum(len(d) for d in files.values())
        if size > limits.disk_mb * 1024 * 1024:
            raise InvalidFileError(f"the files ({size} bytes) exceed the disk limit of {limits.disk_mb} MiB")
        return files, entry, build

    async def _steps(self, instance: Instance, request: ExecutionRequest, lang: Language, limits: Limits,
                     files: dict[str, bytes], entry: str, build: Step | None, run: Runner | None = None,
                     base_env: Mapping[str, str] | None = None) -> dict[str, object]:
        if run is None:
            async def run(spec: ExecSpec, stage: str) -> ProcessOutcome:
                return await instance.exec(spec)
        sources = lang.sources(files) or [entry]
        compiled: StepResult | None = None
        if build is not None and request.command == "run":  # a test runner builds what it tests
            spec = exec_spec(limits, lang.expand(build, entry, sources, ()), compile=True,
                             env={**lang.env, **(base_env or {})}, output_bytes=build.output_bytes)
            compiled = step_result(await run(spec, "compile"), spec)
            if compiled.status is not Status.OK:
                status = Status.COMPILE_ERROR if compiled.status is Status.RUNTIME_ERROR else compiled.status
                return {**compiled.model_dump(), "status": status, "stdout": "", "stderr": "",
                        "stdout_truncated": False, "stderr_truncated": False,
                        "message": f"compile step: {compiled.message}", "compile": compiled}
        stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
        step = self._main_step(lang, request)
        spec = exec_spec(limits, lang.expand(step, entry, sources, request.args), stdin=stdin,
                         env={**lang.env, **(base_env or {}), **request.env}, output_bytes=step.output_bytes)
        ran = step_result(await run(spec, "run"), spec)
        out = {**ran.model_dump(), "compile": compiled}
        if request.arguments is not None and ran.status is Status.OK:
            raw = await instance.read_file(RETURN_FILE, MAX_RETURN_BYTES)
            if raw is None:
                out.update(status=Status.RUNTIME_ERROR, message="main() did not return (no return value written)")
            else:
                try:
                    value = json.loads(raw)
                except (ValueError, RecursionError):  # the program wrote it: its fault, a result
                    out.update(status=Status.RUNTIME_ERROR, message="main()'s return value is not valid JSON")
                else:
                    if _depth(value) > MAX_RETURN_DEPTH:  # deeper than any client (or pydantic) serializes
                        out.update(status=Status.RUNTIME_ERROR,
                                   message=f"main()'s return value nests deeper than {MAX_RETURN_DEPTH} levels")
                    else:
                        out["return_value"] = value
        return out


def _depth(value: object) -> int:
    """How deeply JSON containers nest in ``value`` (iterative: the value is the program's, any depth)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest
