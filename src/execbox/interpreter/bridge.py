"""execbox's kernel bridge: runs inside a sandbox (``python3 -I -c <this> start``), never on the host.

``start`` (the config as JSON on stdin: ``dir``, ``socket``, ``ready_timeout_s``) forks a daemon and prints
one JSON line once the daemon's kernel answers (``{"ok": true, ...}``) or failed (``{"ok": false, "error"}``).
The daemon (its own session, output to ``dir/bridge.log``) starts an IPython kernel with jupyter_client's
KernelManager (ipc transport, sockets in ``dir``), keeps one BlockingKernelClient connected to it, and serves
cells on the unix socket: a JSON request ``{code, timeout_s, interrupt_grace_s, output_bytes}`` in, one JSON
answer (execbox's CellResult fields) out, or ``{"fatal": why}`` when the bridge itself failed.

The daemon starts a new kernel when the previous one died or was killed, and says so in the next answer.
It needs python3 with ipykernel and jupyter_client; nothing of execbox.
"""

import contextlib
import json
import os
import queue
import re
import signal
import socket
import sys
import time
import traceback
from typing import Any

KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:", "--InteractiveShell.colors=NoColor"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
POLL_S = 0.2  # how often a quiet cell checks that its kernel is alive
CPU_CHECK_S = 0.1  # how often a running cell's CPU time is read
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPLY_TIMEOUT_S = 10.0  # the execute_reply, after the kernel went idle
MAX_REQUEST = 64 << 20
SOCKET_CHECK_S = 1.0  # how often an idle bridge checks that its socket is still its own
CONN_TIMEOUT_S = 10.0  # reading a request, sending an answer (the relay does both at once)
NAME_CHARS = 1000  # an exception's class name (a cell can make one of any size)


def _log_exc() -> None:
    """The traceback to the log, unless the log cannot be written (a full /tmp): never a reason to die."""
    with contextlib.suppress(Exception):
        traceback.print_exc()


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def stop_previous(directory: str) -> None:
    """Kill a bridge and kernel left from before (the host starts a new bridge only when it found none
    answering: a hung or half-dead one must not keep its memory)."""
    for name, marker in (("bridge.pid", b"kernel bridge"), ("kernel.pid", b"ipykernel")):
        try:
            with open(os.path.join(directory, name)) as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker not in f.read() or pid == os.getpid():
                    continue
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def cause(code: int | None) -> str:
    """Why a kernel process ended, in words, from its Popen return code."""
    if code is None:
        return "it stopped answering"
    if code >= 0:
        return f"it exited with status {code}"
    sig = -code
    if sig == signal.SIGKILL:
        return "killed by SIGKILL: usually the sandbox's memory limit"
    if sig == signal.SIGXCPU:
        return ("killed by SIGXCPU: it used up the sandbox's cpu_time_s, which bounds the kernel's CPU time "
                "over its whole life")
    try:
        return f"killed by {signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"


def shrink(answer: dict[str, Any], limit: int) -> dict[str, Any]:
    """The answer cut to ``limit`` bytes of JSON, halving its largest part first (a value or an exception
    message can be any size; the host's exec keeps only so much output)."""
    while len(json.dumps(answer)) > limit:
        answer["truncated"] = True
        error = answer.get("error") or {}
        parts = [(answer, "outputs"), (answer, "text"), (answer, "stdout"), (answer, "stderr"), (error, "value"),
                 (error, "traceback"), (error, "name")]
        present = [p for p in parts if p[0].get(p[1])]
        if not present:  # nothing left to cut (a huge message?): the answer without its data
            answer.update(outputs=[], text=None, stdout="", stderr="", error=None,
                          message=str(answer.get("message") or "")[:NAME_CHARS] or None)
            break
        owner, key = max(present, key=lambda p: len(json.dumps(p[0][p[1]])))
        value = owner[key]
        # a traceback keeps its end (where it was raised); the rest keep their beginning
        owner[key] = value[len(value) // 2 + 1:] if key == "traceback" else value[: len(value) // 2]
    return answer


class Cell:
    """What one cell produced, within an output budget (bytes of the JSON answer)."""

    def __init__(self, budget: int) -> None:
        self.budget = self.left = budget
        self.truncated = False
        self.outputs: list[dict[str, Any]] = []
        self.streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.text: str | None = None
        self.error: dict[str, Any] | None = None

    def _fits(self, item: Any) -> bool:
        size = len(json.dumps(item))
        if size <= self.left:
            self.left -= size
            return True
        self.truncated = True
        return False

    def _cut(self, text: str) -> str:
        """At most the budget's characters (the answer's shrink then has little left to do)."""
        if len(text) > self.budget:
            self.truncated = True
            return text[: self.budget]
        return text

    def stream(self, name: str, text: str) -> None:
        if name not in self.streams:
            return
        while text and not self._fits(text):
            text = text[: min(len(text) // 2, self.left)]  # the part that fits, roughly
        if text:
            self.streams[name].append(text)

    def display(self, data: dict[str, Any], result: bool) -> None:
        if result and isinstance(data.get("text/plain"), str):
            self.text = self._cut(data["text/plain"])
        if self._fits(data):
            self.outputs.append(data)

    def clear(self) -> None:
        self.outputs.clear()
        for parts in self.streams.values():
            parts.clear()
        self.left = self.budget

    def handle(self, msg: dict[str, Any]) -> bool:
        """One iopub message of this cell; True when the kernel went idle (the cell's last message)."""
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            return bool(content.get("execution_state") == "idle")
        if kind == "stream":
            self.stream(content.get("name", ""), content.get("text", ""))
        elif kind in ("execute_result", "display_data", "update_display_data"):
            self.display(dict(content.get("data") or {}), kind == "execute_result")
        elif kind == "error":
            self.error = {"name": str(content.get("ename", ""))[:NAME_CHARS],
                          "value": self._cut(str(content.get("evalue", ""))),
                          "traceback": [ANSI.sub("", self._cut(line)) for line in content.get("traceback") or []]}
            self._fits(self.error)
        elif kind == "clear_output":
            self.clear()
        return False


class Bridge:
    def __init__(self, directory: str, ready_timeout_s: float) -> None:
        self.dir, self.ready_timeout_s = directory, ready_timeout_s
        self.km: Any = None
        self.kc: Any = None
        self.lost: str | None = None  # why the previous kernel is gone, for the next answer

    def start(self) -> None:
        from jupyter_client.manager import KernelManager

        km = KernelManager(transport="ipc", connection_file=os.path.join(self.dir, "kernel.json"))
        km.start_kernel(extra_arguments=KERNEL_ARGS, cwd=os.getcwd())
        self.km = km
        try:
            _write(os.path.join(self.dir, "kernel.pid"), str(km.provisioner.pid))
            self.kc = km.client()
            self.kc.start_channels()
            self.kc.wait_for_ready(timeout=self.ready_timeout_s)
        except Exception as e:
            why = cause(self.exit_code())
            self.stop_kernel()  # never keep a kernel that did not answer: the next cell tries a new one
            raise RuntimeError(f"{type(e).__name__}: {e} ({why})") from e
        except BaseException:
            self.stop_kernel()
            raise

    def cpu_time_s(self) -> float:
        """The CPU time the kernel has used, its threads and the children it reaped included (0 when unknown)."""
        pid = getattr(self.km.provisioner, "pid", None) if self.km is not None else None
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (OSError, TypeError):
            return 0.0
        return sum(int(t) for t in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime

    def exit_code(self) -> int | None:
        """None while the kernel runs; its return code once it ended (-N: killed by signal N)."""
        process = getattr(self.km.provisioner, "process", None) if self.km is not None else None
        return -signal.SIGKILL if process is None else process.poll()

    def stop_kernel(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                _log_exc()
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)  # the process group: what the kernel started goes too
            except Exception:
                _log_exc()
        self.km = self.kc = None

    def kill_kernel(self) -> None:
        """The kernel's process group killed, and its files left alone: they may be a new bridge's by now."""
        pid = getattr(self.km.provisioner, "pid", None) if self.km is not None else None
        if pid:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # it leads its own session: what it started goes too
        self.km = self.kc = None

    def serve(self, listener: socket.socket, path: str) -> None:
        """Serve cells until the socket at ``path`` is no longer this bridge's (a cell removed or replaced it,
        or the kernel dir): the bridge then ends, its kernel with it, rather than live on unreachable."""
        mine = os.stat(path)
        listener.settimeout(SOCKET_CHECK_S)
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                try:
                    now = os.stat(path)
                except OSError:
                    return
                if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                    return
                continue
            conn.settimeout(CONN_TIMEOUT_S)  # a client that never sends (or never reads) cannot hold the bridge
            with conn:
                try:
                    data = b""
                    while len(data) <= MAX_REQUEST and (chunk := conn.recv(1 << 16)):
                        data += chunk
                    answer = self.run(json.loads(data))
                except Exception as e:
                    _log_exc()
                    answer = {"fatal": f"{type(e).__name__}: {e}"}
                # the relay may have gone (its exec was killed): the next cell is served all the same
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(answer).encode())

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        notes: list[str] = []
        restarted = False
        if self.km is None or self.exit_code() is not None:
            if self.km is not None:
                self.lost = f"the previous one died between cells ({cause(self.exit_code())})"
                self.stop_kernel()
            self.start()
            restarted = True
            why = self.lost or "the previous one had gone"
            notes.append(f"a new kernel was started because {why}: variables and imports of earlier cells are gone")
            self.lost = None
        timeout_s = float(request["timeout_s"])
        answer = self.execute(request["code"], timeout_s, float(request.get("cpu_time_s", timeout_s)),
                              float(request["interrupt_grace_s"]), int(request["output_bytes"]))
        if answer.get("message"):
            notes.append(answer["message"])
        answer.update(restarted=restarted, message="; ".join(notes) or None)
        return answer

    def execute(self, code: str, timeout_s: float, cpu_s: float, grace_s: float, budget: int) -> dict[str, Any]:
        """Run a cell: past ``timeout_s`` of wall time or ``cpu_s`` of the kernel's CPU time (the bridge's own
        measure: the kernel's lifetime rlimit is far above any cell's) it is interrupted, then killed."""
        kc, cell = self.kc, Cell(budget)
        cpu_start = self.cpu_time_s()
        msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        start = checked = time.monotonic()
        deadline, interrupted, idle, ended, limit = start + timeout_s, False, False, None, f"timeout of {timeout_s:g} s"
        while not idle:
            now = time.monotonic()
            if not interrupted and now - checked >= CPU_CHECK_S:
                checked = now
                if self.cpu_time_s() - cpu_start > cpu_s:
                    deadline, limit = now, f"CPU time of {cpu_s:g} s"
            if now >= deadline:
                if interrupted:
                    ended = "killed"
                    break
                interrupted = True
                with contextlib.suppress(Exception):  # a kernel that just died is seen below
                    self.km.interrupt_kernel()  # SIGINT to the kernel's process group: a KeyboardInterrupt
                deadline = now + grace_s
            try:
                msg = kc.get_iopub_msg(timeout=max(min(POLL_S, deadline - now), 0.001))
            except queue.Empty:
                if self.exit_code() is not None:
                    ended = "died"
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                idle = cell.handle(msg)
        duration = time.monotonic() - start
        status, message, count = "ok", None, None
        if ended == "died":
            why = cause(self.exit_code())
            self.lost = f"the previous one died during a cell ({why})"
            self.stop_kernel()
            status = "kernel_died"
            message = f"the kernel died during the cell ({why}): its state is lost; the next cell starts a new one"
        elif ended == "killed":
            self.lost = "the previous one was killed: a cell ran past its timeout and ignored the interrupt"
            self.stop_kernel()
            status = "timeout"
            message = (f"the cell ran past its {limit} and did not stop within {grace_s:g} s of "
                       "an interrupt: the kernel was killed, its state is lost; the next cell starts a new one")
        else:
            reply = self.reply(msg_id)
            content = reply.get("content", {}) if reply else {}
            count = content.get("execution_count")
            failed = content.get("status", "error" if cell.error else "ok") != "ok" or cell.error is not None
            if interrupted and failed:
                status = "timeout"
                message = (f"the cell ran past its {limit} and was interrupted "
                           "(KeyboardInterrupt); the kernel and its state live on")
            elif failed:
                status = "error"
                if cell.error is None:
                    cell.error = {"name": str(content.get("ename", "Error"))[:NAME_CHARS],
                                  "value": content.get("evalue", ""),
                                  "traceback": [ANSI.sub("", x) for x in content.get("traceback") or []]}
        return shrink({"status": status, "text": cell.text, "outputs": cell.outputs,
                       "stdout": "".join(cell.streams["stdout"]), "stderr": "".join(cell.streams["stderr"]),
                       "error": cell.error, "execution_count": count, "duration_s": round(duration, 6),
                       "truncated": cell.truncated, "message": message}, budget)

    def reply(self, msg_id: str) -> dict[str, Any] | None:
        """The cell's execute_reply (earlier cells' replies, if any are left, are skipped)."""
        end = time.monotonic() + REPLY_TIMEOUT_S
        while (left := end - time.monotonic()) > 0:
            try:
                msg = self.kc.get_shell_msg(timeout=left)
            except queue.Empty:
                return None
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(msg)
        return None


def daemon(config: dict[str, Any], ready: int) -> None:
    directory = config["dir"]
    os.setsid()  # its own session: it outlives the exec that started it, and signals to the exec pass it by
    log = os.open(os.path.join(directory, "bridge.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)  # the kernel inherits these: its own crash output lands in the log too
    os.dup2(log, 2)
    bridge = Bridge(directory, float(config["ready_timeout_s"]))
    reported = False
    try:
        bridge.start()
        path = config["socket"]
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        _write(os.path.join(directory, "bridge.pid"), str(os.getpid()))
        os.write(ready, json.dumps({"ok": True, "kernel_pid": bridge.km.provisioner.pid}).encode())
        os.close(ready)
        reported = True
        bridge.serve(listener, path)
        bridge.kill_kernel()  # not stop_kernel: jupyter_client would remove files of the bridge that replaced it
    except BaseException as e:
        _log_exc()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if not reported:
            try:
                with open(os.path.join(directory, "bridge.log"), "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace")
                os.write(ready, json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}\n{tail}"}).encode())
            except OSError:
                pass
    finally:
        bridge.stop_kernel()
        os._exit(1)


def main() -> int:
    if sys.argv[1:] != ["start"]:
        print("usage: python3 -I -c <bridge.py> start  (config as JSON on stdin)", file=sys.stderr)
        return 2
    config = json.loads(sys.stdin.read())
    directory = config["dir"]
    if os.path.islink(directory) or (os.path.lexists(directory) and not os.path.isdir(directory)):
        os.unlink(directory)  # a cell put a file or a symlink there: the kernel's files are execbox's
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    stop_previous(directory)
    read_end, write_end = os.pipe()  # not inherited by the kernel (non-inheritable by default)
    if os.fork() == 0:
        os.close(read_end)
        daemon(config, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        word = f.read()  # EOF once the daemon reported (or died)
    try:
        answer = json.loads(word)
    except ValueError:
        answer = {"ok": False, "error": "the kernel bridge exited while starting"}
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
