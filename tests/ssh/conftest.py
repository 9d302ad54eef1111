"""A real sshd for the ssh provider's tests, and the far side's execbox.

``Sshd`` runs ``/usr/sbin/sshd -D -e`` on a free port of 127.0.0.1 with a host key and an authorized client
key generated for it, root's login by key only. The far side is this host: the agent runs this checkout's
execbox (``PYTHONPATH``, this interpreter) with a uid block and runtime dir of this test process
(tests/providers.py), and no pre-started sandboxes, so "no process of the uids left" means exactly that
nothing of the tests' runs is left.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.providers import runtime_dir, uid_block
from tests.server.conftest import free_port

import execbox
from execbox import Engine
from execbox.providers.registry import ProviderRegistry, parse_instance

SSHD = Path("/usr/sbin/sshd")
FAR_UIDS = uid_block("ssh-far", 16)
FAR_RUNTIME = runtime_dir("ssh-far")
SRC = Path(execbox.__file__).resolve().parent.parent
COMMAND = (f"env EXECBOX_LOCAL_WARM_POOL=0 EXECBOX_LOCAL_SANDBOX_POOL=0 PYTHONPATH={shlex.quote(str(SRC))} "
           f"{shlex.quote(sys.executable)} -m execbox.cli")

def keygen(path: Path) -> tuple[str, str]:
    """A new ed25519 key pair at ``path``: (private key text, public key line)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "execbox-test", "-f", str(path)],
                   check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


class Sshd:
    """One sshd on 127.0.0.1 (``start``, ``stop``), its keys, and settings for the ssh provider."""

    def __init__(self, tmp: Path) -> None:
        if not SSHD.exists():
            pytest.skip("openssh-server is not installed (scripts/bootstrap installs it)")
        if os.geteuid() != 0:
            pytest.skip("the far side's sandboxes need root (and sshd's root login)")
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        _, self.host_public = keygen(tmp / "host_key")
        self.client_key, client_public = keygen(tmp / "client_key")
        (tmp / "authorized_keys").write_text(client_public + "\n")
        self.log = tmp / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public}\n"

    def start(self) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege-separation dir
        for _ in range(5):  # a free port may be taken between the probe and sshd's bind
            self.port = free_port()
            config = self.tmp / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress 127.0.0.1:{self.port}", f"HostKey {self.tmp / 'host_key'}",
                f"PidFile {self.tmp / 'sshd.pid'}", f"AuthorizedKeysFile {self.tmp / 'authorized_keys'}",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "UsePAM no", "StrictModes no", "AllowUsers root", "LogLevel VERBOSE", ""]))
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop sshd and every connection it serves."""
        if self.proc is None:
            return
        for pid in self.connection_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def connection_pids(self) -> list[int]:
        """sshd's per-connection processes (its descendants that are sshd, not what they run)."""
        assert self.proc is not None
        found, frontier = [], {self.proc.pid}
        while frontier:
            children = {pid for pid, (ppid, comm) in _processes().items() if ppid in frontier and comm == "sshd"}
            found += sorted(children)
            frontier = children
        return found

    def settings(self, **changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "user": "root", "known_hosts": self.known_hosts,
            "private_key": self.client_key, "execbox_command": COMMAND, "first_uid": FAR_UIDS.start,
            "uid_count": len(FAR_UIDS), "runtime_dir": str(FAR_RUNTIME), "connect_timeout_s": 5}
        return {**base, **changes}

    def accepted_logins(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                out[int(d.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), comm)
    return out


def far_processes() -> list[str]:
    """What runs (not zombies) under the far side's uids: the tests' programs, and nothing once they end."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
            uid = int(status["Uid"].split()[0])
            if uid in FAR_UIDS and not status["State"].strip().startswith("Z"):
                argv = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"{d.name} {argv}")
    return out


def agents() -> list[int]:
    """The pids of the far side's agents (this test process's, by their runtime dir)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (d / "cmdline").read_bytes().split(b"\0")
                if b"agent" in argv and str(FAR_RUNTIME).encode() in argv:
                    out.append(int(d.name))
    return out


def wait_until(check: Any, timeout_s: float = 10.0) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def own_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """An sshd of the test's own (one it may stop or whose connections it may kill)."""
    server = Sshd(tmp_path / "sshd").start()
    yield server
    server.stop()


def registry(server: Sshd, **changes: Any) -> ProviderRegistry:
    return ProviderRegistry(configs={"ssh-t": parse_instance("ssh-t", "ssh", server.settings(**changes))},
                            default="ssh-t")


@pytest.fixture
async def engine(sshd: Sshd) -> AsyncIterator[Engine]:
    providers = registry(sshd)
    yield Engine(providers=providers)
    await providers.aclose()
    assert wait_until(lambda: not agents()), "the agent outlived its connection"
    assert not far_processes(), "a run left processes on the far side"
