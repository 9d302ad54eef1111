"""No network by default: only a private loopback inside; nothing on the host (not even its 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Sandbox


class _Listener:
    """A TCP (or abstract unix) server on the host that counts the connections it accepts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.accepted = sock, 0
        sock.listen(16)
        sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            with contextlib.suppress(OSError):
                conn.sendall(b"HOST-SERVICE-BANNER\n")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def host_tcp() -> Iterator[_Listener]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    listener = _Listener(s)
    yield listener
    listener.close()


@pytest.fixture
def host_abstract_unix() -> Iterator[tuple[str, _Listener]]:
    name = f"execbox-escape-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("\0" + name)
    listener = _Listener(s)
    yield name, listener
    listener.close()


async def test_egress_python_is_unreachable(sandbox: Sandbox) -> None:
    code = r"""
import os, socket
for host in ("1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1)
    try:
        s.connect((host, 53)); print(host, "CONNECTED")
    except OSError as e:
        print(host, os.strerror(e.errno) if e.errno else e)
try:
    print("dns", socket.getaddrinfo("example.com", 80))
except socket.gaierror as e:
    print("dns failed")
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert r.stdout == ("1.1.1.1 Network is unreachable\n8.8.8.8 Network is unreachable\n"
                        "2606:4700:4700::1111 Network is unreachable\ndns failed\n")


async def test_egress_javascript_fetch_fails(sandbox: Sandbox) -> None:
    code = r"""
const net = require("net");
const s = net.connect({ host: "1.1.1.1", port: 80 });
s.on("connect", () => { console.log("CONNECTED"); process.exit(0); });
s.on("error", (e) => { console.log("error", e.code); });
"""
    r = await sandbox.run("javascript", code)
    assert r.status.value == "ok", r
    assert r.stdout == "error ENETUNREACH\n"


async def test_only_loopback_interface_exists(sandbox: Sandbox) -> None:
    r = await sandbox.run("python", "import socket, os\nprint(socket.if_nameindex())\n"
                                    "print(open('/proc/net/route').read().splitlines()[1:])")
    assert r.status.value == "ok", r
    assert r.stdout == "[(1, 'lo')]\n[]\n"


async def test_host_loopback_service_is_unreachable(sandbox: Sandbox, host_tcp: _Listener) -> None:
    port = host_tcp.sock.getsockname()[1]
    code = f"""
exec 3<>/dev/tcp/127.0.0.1/{port} && {{ echo CONNECTED; head -1 <&3; }}
echo rc=$?
"""
    r = await sandbox.run("bash", code)
    assert r.status.value == "ok", r
    assert "Connection refused" in r.stderr and "CONNECTED" not in r.stdout and "BANNER" not in r.stdout
    assert host_tcp.accepted == 0


async def test_host_loopback_service_unreachable_from_c(sandbox: Sandbox, host_tcp: _Listener) -> None:
    port = host_tcp.sock.getsockname()[1]
    code = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    const char *hosts[] = {"127.0.0.1", "127.0.0.2", "0.0.0.0"};
    for (int i = 0; i < 3; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
        inet_pton(AF_INET, hosts[i], &a.sin_addr);
        int r = connect(s, (struct sockaddr *)&a, sizeof a);
        printf("%s: %s\n", hosts[i], r == 0 ? "CONNECTED" : strerror(errno));
    }
    return 0;
}
"""
    r = await sandbox.run("c", code, args=[str(port)])
    assert r.status.value == "ok", r
    assert r.stdout == ("127.0.0.1: Connection refused\n127.0.0.2: Connection refused\n"
                        "0.0.0.0: Connection refused\n")
    assert host_tcp.accepted == 0


async def test_host_abstract_unix_socket_is_unreachable(sandbox: Sandbox,
                                                       host_abstract_unix: tuple[str, _Listener]) -> None:
    # abstract unix sockets belong to the network namespace: the host's must not be reachable
    name, listener = host_abstract_unix
    code = f"""
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\\0{name}"); print("CONNECTED", s.recv(100))
except OSError as e:
    print(os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert r.stdout == "Connection refused\n"
    assert listener.accepted == 0


async def test_network_request_cannot_widen_the_policy(sandbox: Sandbox, host_tcp: _Listener) -> None:
    # The default operator policy's maximum is network=False: a request asking for the network gets none.
    port = host_tcp.sock.getsockname()[1]
    code = f"""
import os, socket
for host in ("1.1.1.1", "127.0.0.1"):
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((host, {port})); print(host, "CONNECTED")
    except OSError as e:
        print(host, os.strerror(e.errno))
print(socket.if_nameindex())
"""
    r = await sandbox.run("python", code, network=True)
    assert r.status.value == "ok", r
    assert r.stdout == "1.1.1.1 Network is unreachable\n127.0.0.1 Connection refused\n[(1, 'lo')]\n"
    assert host_tcp.accepted == 0


async def test_raw_and_packet_sockets_are_denied(sandbox: Sandbox) -> None:
    code = r"""
import os, socket
for name, args in (("packet", (socket.AF_PACKET, socket.SOCK_RAW, 0)),
                   ("raw", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))):
    try:
        socket.socket(*args); print(name, "OPENED")
    except OSError as e:
        print(name, os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert r.stdout == "packet Operation not permitted\nraw Operation not permitted\n"


async def test_loopback_inside_works_and_is_private(sandbox: Sandbox) -> None:
    # The program may use its own loopback (a server and a client in one run): not a way out, just lo.
    code = r"""
import socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
threading.Thread(target=lambda: srv.accept()[0].sendall(b"inside"), daemon=True).start()
c = socket.create_connection(("127.0.0.1", port), timeout=1)
print(c.recv(10).decode())
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert r.stdout == "inside\n"
