"""execbox's kernel relay: runs inside a sandbox (``python3 -I -S -c <this> SOCKET MAX_BYTES | SOCKET stop``), never
on the host.

Hands one cell (a JSON request on stdin) to the kernel bridge listening on SOCKET and prints its JSON answer.
It runs once per cell, so it starts as fast as python3 can: no ``site``, and ``_socket`` rather than
``socket`` (whose enum and selectors imports cost more than the rest of the cell). Exit codes: 0 answered,
3 no bridge listens (the host starts one), 4 the bridge hung up without an answer (it died during the cell),
5 the answer passed MAX_BYTES (no bridge of execbox's sends that much: something else listens on SOCKET); the
relay stops reading there, so its memory is bounded whatever answers.
``stop``: kill the bridge and its kernel (pid files beside the socket), for a bridge that stopped answering.
"""

import _socket
import sys

NO_BRIDGE, BRIDGE_GONE, TOO_BIG = 3, 4, 5


def stop(directory: str) -> None:
    import os
    import signal

    for name, marker in (("bridge.pid", b"kernel bridge"), ("kernel.pid", b"ipykernel")):
        try:
            with open(os.path.join(directory, name)) as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker not in f.read():
                    continue  # the pid was reused by something else
            os.killpg(pid, signal.SIGKILL)  # each leads its own session: its children go too
        except (OSError, ValueError):
            pass


def main() -> int:
    path = sys.argv[1]
    if sys.argv[2:] == ["stop"]:
        stop(path.rpartition("/")[0])
        return 0
    limit = int(sys.argv[2])
    request = sys.stdin.buffer.read()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return NO_BRIDGE
    try:
        s.sendall(request)
        s.shutdown(_socket.SHUT_WR)
        chunks, size = [], 0
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return TOO_BIG
    except OSError:
        return BRIDGE_GONE
    if not chunks:
        return BRIDGE_GONE
    sys.stdout.buffer.write(b"".join(chunks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
