"""A stateful code interpreter in a persistent sandbox: ``sandbox.run_code(code)`` (issue 5).

    r = await sb.run_code("x = 41")
    r = await sb.run_code("x + 1")      # r.text == "42"; r.outputs, r.stdout, r.stderr, r.error

The interpreter is a real IPython kernel (ipykernel), spoken to with jupyter_client, both run *inside* the
sandbox by its own python3, and reached through ``Instance.exec`` only, so that it works on any provider
that keeps persistent instances (local, docker):

- the first ``run_code`` execs ``bridge.py`` (``python3 -I -c <source>``): it forks a small daemon (the
  *bridge*) that starts the kernel with jupyter_client's ``KernelManager`` (ipc transport: sockets in
  ``/tmp/.execbox-kernel``), connects a ``BlockingKernelClient`` and serves cells on a unix socket there;
  the exec ends as soon as the kernel answers. Kernel and bridge then live on in the background of the
  sandbox (in that exec's cgroup: the sandbox's memory and pids caps; the sandbox's ``cpu_time_s`` is an
  rlimit on each of them over its whole life).
- each ``run_code`` execs ``relay.py`` (``python3 -I -S``: no imports beyond the socket), which hands the
  cell to the bridge and prints its one JSON answer, parsed here into a ``CellResult``.

Why a bridge rather than a jupyter_client per exec: importing jupyter_client takes ~0.3 s, and a fresh
client must first make sure its iopub subscription is live; the bridge pays both once per kernel.

The bridge enforces each cell's timeout (SIGINT to the kernel's process group, then a kill if the cell
has not stopped within ``INTERRUPT_GRACE_S``), sees the kernel die (``os._exit``, a signal, the memory
limit) and starts a new kernel on the next cell, which says so (``restarted``). The relay's exec has a
wall time of its own above the cell's, in case the bridge itself hangs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import replace
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from execbox.engine import exec_spec
from execbox.errors import ExecboxError, RequestError, SandboxError
from execbox.models import Limits
from execbox.providers.base import ExecSpec, Instance, ProcessOutcome, StopReason

KERNEL_DIR = "/tmp/.execbox-kernel"  # inside the sandbox: its /tmp, never the workdir (files.list stays clean)
SOCKET = f"{KERNEL_DIR}/bridge.sock"
START_WALL_S = 60.0  # starting python, jupyter_client and the kernel, on a cold page cache
INTERRUPT_GRACE_S = 3.0  # after the SIGINT, before the kernel is killed
RELAY_MARGIN_S = 60.0  # the relay's wall time past the cell's: the grace, a kernel (re)start, the answer
KERNEL_CPU_S = 3600.0  # CPU time a kernel's processes may use over their whole life (each cell: its timeout)
NO_BRIDGE, BRIDGE_GONE, TOO_BIG = 3, 4, 5  # the relay's exit codes (relay.py)
ENVELOPE_BYTES = 64 * 1024  # the relay's output cap beyond the cell's own output: the answer's JSON around it
MAX_DEPTH = 64  # nesting of an output's data (application/json): deeper cannot be serialized back out
WHY_CHARS = 1500  # of a reason that came from inside the sandbox, in a message or an error
# A kernel failing to start with one of these ran into the sandbox's limits (memory, pids, open files), which
# the request chose: a RequestError naming them, not the sandbox's failure.
LIMIT_SIGNS = ("[Errno 11]", "[Errno 12]", "[Errno 24]", "MemoryError", "exited while starting",
               "Kernel died before replying")
DISK_SIGNS = ("[Errno 28]", "[Errno 122]")  # ENOSPC, EDQUOT: the sandbox's /tmp (the kernel's files) is full
# where matplotlib, IPython and jupyter write their caches and state: the root may be read-only and HOME odd
KERNEL_ENV = {"MPLCONFIGDIR": f"{KERNEL_DIR}/matplotlib", "IPYTHONDIR": f"{KERNEL_DIR}/ipython",
              "JUPYTER_CONFIG_DIR": f"{KERNEL_DIR}/jupyter", "JUPYTER_DATA_DIR": f"{KERNEL_DIR}/jupyter",
              "JUPYTER_RUNTIME_DIR": f"{KERNEL_DIR}/runtime", "JUPYTER_PLATFORM_DIRS": "1",
              "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def _is_binary(mime: str) -> bool:
    """Jupyter carries these as base64 text; execbox hands them out as bytes."""
    return (mime.startswith("image/") and not mime.endswith(("+xml", "+json"))) or mime == "application/pdf"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CellStatus(enum.StrEnum):
    """How a cell ended."""

    OK = "ok"
    ERROR = "error"  # the code raised: see ``error``
    TIMEOUT = "timeout"  # it ran past its timeout and was interrupted (or, when that failed, the kernel killed)
    KERNEL_DIED = "kernel_died"  # the kernel died while running it (os._exit, a signal, the memory limit)


class CellError(_Model):
    """The exception a cell raised, as data."""

    name: str = Field(description="The exception's class name, e.g. 'ZeroDivisionError'.")
    value: str = Field(description="Its message, e.g. 'division by zero'.")
    traceback: list[str] = Field(default_factory=list, description="The formatted traceback, one entry per "
                                 "frame or line (no terminal colours).")


class CellResult(_Model):
    """The outcome of one ``run_code`` cell. The code failing is a result (``status``), never an exception."""

    status: CellStatus
    text: str | None = Field(None, description="The text/plain of the cell's value (its last expression, as "
                             "Jupyter's Out[n]), e.g. '42'; None when it has none.")
    outputs: list[dict[str, Any]] = Field(
        default_factory=list, description="Rich outputs in order (displays, figures, the cell's value): each a "
        "bundle {mime type: data}, e.g. {'text/plain': '<Figure ...>', 'image/png': b'\\x89PNG...'}. Binary "
        "types (image/png, image/jpeg, application/pdf) are bytes, base64 text in JSON.")
    stdout: str = Field("", description="What the cell printed to stdout.")
    stderr: str = Field("", description="What the cell printed to stderr (warnings included).")
    error: CellError | None = Field(None, description="The exception, for 'error' (and the KeyboardInterrupt "
                                    "of an interrupted 'timeout').")
    execution_count: int | None = Field(None, description="The kernel's execution counter (In [n]).")
    duration_s: float = Field(0.0, description="Wall time of the cell in the kernel, seconds.")
    restarted: bool = Field(False, description="A new kernel was started for this cell because the previous "
                            "one had died or been killed: variables and imports of earlier cells are gone.")
    truncated: bool = Field(False, description="Output beyond the sandbox's output_bytes was dropped.")
    message: str | None = Field(None, description="What happened, in words, when it is not plain ok/error.")

    @property
    def ok(self) -> bool:
        return self.status is CellStatus.OK

    @field_validator("outputs", mode="before")
    @classmethod
    def _decode(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for bundle in v:
            if isinstance(bundle, dict):
                bundle = dict(bundle)
                for mime, data in bundle.items():
                    if isinstance(data, str) and _is_binary(mime):
                        try:
                            bundle[mime] = base64.b64decode(data, validate=False)
                        except (binascii.Error, ValueError) as e:
                            raise ValueError(f"{mime} is not base64") from e
            out.append(bundle)
        return out

    @field_serializer("outputs", when_used="json")
    def _encode(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{mime: base64.b64encode(d).decode() if isinstance(d, bytes) else d for mime, d in bundle.items()}
                for bundle in outputs]


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def _tail(data: bytes, n: int = WHY_CHARS) -> str:
    return data.decode(errors="replace").strip()[-n:]


class _TooDeep(ValueError):
    pass


def _clean(value: Any, depth: int = 0) -> Any:
    """A JSON value from inside the sandbox, fit to be served: lone surrogates (JSON's "\\ud800", which no
    UTF-8 encoder takes) replaced, nesting bounded (``_TooDeep``)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode(errors="replace").decode()  # each lone surrogate becomes '?'
        return value
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        raise _TooDeep
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_clean(k, depth + 1): _clean(v, depth + 1) for k, v in value.items()}
    return value


def _clean_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """The bridge's answer, cleaned (``_clean``); an output whose data nests too deep is dropped (truncated)."""
    outputs = answer.get("outputs")
    answer = {k: _clean(v) for k, v in answer.items() if k != "outputs"}
    if isinstance(outputs, list):
        kept = []
        for bundle in outputs:
            if isinstance(bundle, dict):
                fit = {}
                for mime, data in bundle.items():
                    try:
                        fit[_clean(mime)] = _clean(data, 2)
                    except _TooDeep:
                        answer["truncated"] = True
                        note = f"an output's {_clean(mime)[:100]} data nested deeper than {MAX_DEPTH} levels: dropped"
                        answer["message"] = f"{answer['message']}; {note}" if answer.get("message") else note
                bundle = fit
            kept.append(bundle)
        outputs = kept
    if outputs is not None:
        answer["outputs"] = outputs
    return answer


class Kernel:
    """The IPython kernel of one sandbox (created with it, started by its first cell). Cells run one at a
    time, in call order."""

    def __init__(self, instance: Instance, language: str, limits: Limits, env: Mapping[str, str]) -> None:
        self._instance, self._language, self._limits = instance, language, limits
        self._env = {**env, **KERNEL_ENV}
        self._lock = asyncio.Lock()
        self._started = False  # a kernel was started once: a missing bridge means a lost one
        self._lost: str | None = None  # why the previous kernel is gone, when the next answer cannot know

    def _spec(self, argv: tuple[str, ...], stdin: bytes, wall_s: float, cpu_s: float) -> ExecSpec:
        lim = self._limits
        # the cell's output is capped by the bridge (output_bytes); the exec's cap leaves room for the JSON around it
        return replace(exec_spec(lim, argv, stdin=stdin, env=self._env), wall_time_s=wall_s, cpu_time_s=cpu_s,
                       output_bytes=lim.output_bytes + ENVELOPE_BYTES)

    def _failed(self, why: str, stopped_by: object = None, ran_before: bool = False) -> ExecboxError:
        """The error for a kernel that could not start (or restart): the request's limits, or the sandbox.
        Once a kernel ran in this sandbox (``ran_before``: python3, ipykernel and jupyter_client are there),
        what keeps the next one from starting is in the sandbox (a cell's doing) and the reason may be a cell's
        forgery: the request's error (400), never the server's (500)."""
        lim = self._limits
        why = why.strip()[-WHY_CHARS:].encode(errors="replace").decode()
        if any(sign in why for sign in DISK_SIGNS):
            return RequestError(f"the python kernel could not start: the sandbox's /tmp, where it keeps its files, "
                                f"is full (disk_mb={lim.disk_mb}): {why}; free some space there (exec) and retry")
        if ran_before and any(sign in why for sign in LIMIT_SIGNS):  # the same limits were enough before
            return RequestError(f"the python kernel could not start again within this sandbox's limits (memory_mb="
                                f"{lim.memory_mb}, pids={lim.pids}, open_files={lim.open_files}, cpu_time_s="
                                f"{lim.cpu_time_s:g}): {why[-600:]}; what processes "
                                "left in the sandbox hold may leave it too little, or one of them killed it: end them "
                                "(exec), or create a sandbox with larger limits")
        if stopped_by is not None or any(sign in why for sign in LIMIT_SIGNS):
            return RequestError(f"the python kernel could not start within this sandbox's limits (memory_mb="
                                f"{lim.memory_mb}, pids={lim.pids}, open_files={lim.open_files}, cpu_time_s="
                                f"{lim.cpu_time_s:g}): {why[-600:]}; create the sandbox with larger ones")
        if ran_before:
            return RequestError(f"the sandbox's python kernel could not run the cell: {why}; something in the sandbox "
                                "keeps a new kernel from starting or answering (files in the workdir shadowing Python "
                                "modules, a process left by an earlier cell?); the next run_code tries again")
        return SandboxError(f"the sandbox's python kernel could not start (run_code needs python3 with ipykernel "
                            f"and jupyter_client in the sandbox): {why}")

    async def run(self, code: str, timeout_s: float | None) -> CellResult:
        if self._language != "python":
            raise RequestError(f"run_code runs Python (an IPython kernel); this sandbox's language is "
                               f"{self._language!r}: create a python sandbox for it")
        if not isinstance(code, str):
            raise RequestError("code is a string of Python source")
        if "\0" in code:
            raise RequestError("code contains NUL")
        try:
            code.encode()
        except UnicodeEncodeError:
            raise RequestError("code is not valid UTF-8 text (lone surrogate)") from None
        wall = self._limits.wall_time_s
        timeout = wall if timeout_s is None else timeout_s
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise RequestError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        timeout = min(float(timeout), wall)  # tighten only, as an exec's limits
        async with self._lock:
            return await self._run(code, timeout)

    def _relay(self, *args: str) -> tuple[str, ...]:
        return ("python3", "-I", "-S", "-c", _script("relay.py"), SOCKET, *args)

    async def _run(self, code: str, timeout_s: float) -> CellResult:
        request = json.dumps({"code": code, "timeout_s": timeout_s, "interrupt_grace_s": INTERRUPT_GRACE_S,
                              "output_bytes": self._limits.output_bytes}).encode()
        wall = timeout_s + INTERRUPT_GRACE_S + RELAY_MARGIN_S
        # the relay reads no more than the exec may print: a bigger answer is not the bridge's (relay.py)
        cap = str(self._limits.output_bytes + ENVELOPE_BYTES)
        relay = self._spec(self._relay(cap), request, wall, wall)
        outcome = await self._instance.exec(relay)
        restarted = False
        if outcome.exit_code == NO_BRIDGE:
            if self._started and self._lost is None:
                self._lost = ("the previous one's bridge process was gone (killed, or its socket removed, from inside "
                              "the sandbox?)")
            await self._start()
            restarted = self._started
            self._started = True
            outcome = await self._instance.exec(relay)
        cell, stop = self._parse(outcome, timeout_s, restarted)
        if stop:  # the bridge did not answer in time, or not as a bridge does: both go, the next cell starts anew
            await self._instance.exec(self._spec(self._relay("stop"), b"", 10.0, 10.0))
        return cell

    async def _start(self) -> None:
        config = json.dumps({"dir": KERNEL_DIR, "socket": SOCKET, "ready_timeout_s": START_WALL_S - 10}).encode()
        # The bridge and the kernel inherit this exec's limits, its CPU time as their lifetime CPU rlimit: the
        # bridge holds each cell to its own CPU time (its timeout's), so the kernel's life gets KERNEL_CPU_S.
        spec = self._spec(("python3", "-I", "-c", _script("bridge.py"), "start"), config, START_WALL_S,
                          max(self._limits.cpu_time_s, KERNEL_CPU_S))
        outcome = await self._instance.exec(spec)
        try:
            answer = json.loads(outcome.stdout)
        except (ValueError, RecursionError):
            answer = None
        if outcome.exit_code == 0 and isinstance(answer, dict) and answer.get("ok"):
            return
        why = (answer or {}).get("error") if isinstance(answer, dict) else None
        if not isinstance(why, str):
            tail = _tail(outcome.stderr) or _tail(outcome.stdout)
            why = f"exit {outcome.exit_code}, signal {outcome.signal}, stopped by {outcome.stopped_by}" + (
                f": {tail}" if tail else "")
        raise self._failed(why, outcome.stopped_by, ran_before=self._started)

    def _unusable(self, why: str, restarted: bool) -> tuple[CellResult, bool]:
        """The relay's answer cannot be a bridge's: something in the sandbox (the cell itself, or a process it
        left) killed the relay, answered in the bridge's place or wrote into the relay's output. The host
        trusts none of it: the bridge and its kernel are stopped, and the next cell starts new ones."""
        self._lost = "the previous one's answer was unusable and it was stopped"
        return CellResult(status=CellStatus.KERNEL_DIED, restarted=restarted,
                          message=f"no valid answer from the kernel's bridge ({why}): something in the sandbox "
                                  "replaced or interfered with it (killed the relay, listened on its socket?); the "
                                  "kernel and its bridge were stopped, its state is lost: the next cell starts a "
                                  "new one"), True

    def _parse(self, outcome: ProcessOutcome, timeout_s: float, restarted: bool) -> tuple[CellResult, bool]:
        """The cell's result from the relay's exec, and whether the bridge must be stopped. Everything the
        relay printed comes from inside the sandbox and is checked like any input: only the sandbox failing
        raises (SandboxError), never an answer a cell could forge."""
        lost, self._lost = self._lost, None
        if outcome.exit_code == BRIDGE_GONE:
            self._lost = "the previous one's bridge process died during a cell"
            return CellResult(status=CellStatus.KERNEL_DIED, restarted=restarted,
                              message="the kernel's bridge process died during the cell; the next cell starts a "
                                      "new kernel"), False
        if outcome.stopped_by is StopReason.WALL_TIME:
            self._lost = "the previous one stopped answering and was killed"
            return CellResult(status=CellStatus.TIMEOUT, restarted=restarted,
                              message=f"no answer from the kernel within {outcome.wall_time_s:.0f} s "
                                      f"({outcome.stopped_by}); it was killed: the next cell starts a new one"), True
        if outcome.stopped_by is not None:  # output, memory, CPU: the relay answers with a bounded copy only
            return self._unusable(f"the relay was stopped by the {outcome.stopped_by} limit", restarted)
        if outcome.exit_code == TOO_BIG:
            return self._unusable(f"an answer past {self._limits.output_bytes + ENVELOPE_BYTES} bytes", restarted)
        if outcome.exit_code != 0:
            how = f"signal {outcome.signal}" if outcome.exit_code is None else f"exit {outcome.exit_code}"
            tail = _tail(outcome.stderr, 300)
            return self._unusable(f"the relay ended with {how}" + (f": {tail}" if tail else ""), restarted)
        try:
            answer = json.loads(outcome.stdout)
        except (ValueError, RecursionError):
            return self._unusable(f"{len(outcome.stdout)} bytes that are not JSON", restarted)
        if not isinstance(answer, dict):
            return self._unusable("JSON that is not an object", restarted)
        if "fatal" in answer:  # the bridge could not serve the cell: mostly a new kernel that could not start
            # A kernel started in this sandbox before (python3, ipykernel, jupyter_client are there): what keeps
            # the next one from starting is in the sandbox (its limits, a full /tmp, a cell's doing), and the
            # answer may be a cell's forgery: the request's error (400), never the server's (500).
            raise self._failed(str(answer["fatal"])[-WHY_CHARS:], ran_before=True)
        try:
            cell = CellResult.model_validate(_clean_answer(answer))
        except (ValidationError, _TooDeep) as e:
            return self._unusable(f"an invalid answer: {str(e)[:WHY_CHARS]}", restarted)
        if restarted and not cell.restarted:  # the bridge itself was new: it cannot know what came before
            note = f"a new kernel was started because {lost}: variables and imports of earlier cells are gone"
            cell = cell.model_copy(update={"restarted": True,
                                           "message": f"{note}; {cell.message}" if cell.message else note})
        return cell, False


__all__ = ["CellError", "CellResult", "CellStatus", "Kernel"]
