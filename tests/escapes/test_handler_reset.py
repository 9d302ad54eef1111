"""A hostile tenant on a function service's reused environment: it tries to leave something behind for the
next one, and the next run (another tenant's, on the same handler) looks for every trace. The handler runs as
each service runs it (tests/cloud/handler_env.py: Cloud Run / Container Apps, programs as a uid of their own;
Lambda, programs as the handler's uid), in a PID namespace of its own: its reset reaches nothing else here."""

from __future__ import annotations

import ast
from collections.abc import Iterator

import httpx
import pytest
from tests.cloud.handler_env import HttpHandler, LambdaHandler, call, needs_namespace

# Everything the first tenant tries to leave: a daemon (session of its own, double fork, its output closed,
# SIGTERM/SIGHUP ignored, undumpable, rewriting its traces), files in every scratch directory (/run/lock too:
# world-writable in execbox's Debian base) and beside its workdir, its workdir's files changed, a System V
# shared memory segment, the next workdir's name guessed.
HOSTILE = r"""
import ctypes, os, signal, time
work = os.getcwd()
base = os.path.dirname(os.path.dirname(work))
planted = []
def plant(path, data=b"left by tenant A"):
    try:
        with open(path, "wb") as f:
            f.write(data)
        planted.append(path)
    except OSError:
        pass
for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", os.environ.get("HOME", "/tmp")):
    plant(os.path.join(d, "from-a"))
plant(os.path.join(work, "main.py"), b"print('tenant A wrote this')")
plant(os.path.join(work, "sitecustomize.py"), b"print('tenant A hooked python')")
for guess in ("run-next", "..", "."):
    try:
        os.makedirs(os.path.join(base, guess, "work"), exist_ok=True)
        plant(os.path.join(base, guess, "work", "main.py"), b"print('tenant A')")
    except OSError:
        pass
libc = ctypes.CDLL(None)
shm = libc.shmget(0x5eed, 4096, 0o1000 | 0o666)  # IPC_CREAT
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: its /proc entries now read as root's
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            for p in planted:
                try:
                    with open(p, "ab") as f:
                        f.write(b".")
                except OSError:
                    pass
            try:
                open("/tmp/daemon-alive", "w").close()
            except OSError:
                pass
            time.sleep(0.02)
    os._exit(0)
os.wait()
time.sleep(0.3)
print(len(planted), shm >= 0)
"""

# The next tenant: what of the first one's it can find.
LOOK = r"""
import os
found = []
me = os.getpid()
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != me:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        with open(f"/proc/{p}/status") as f:  # the real uid: /proc/PID of an undumpable process is root's
            uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
        if uid == os.getuid() and "lambda_driver" not in cmd:
            found.append(("process", cmd))
work = os.getcwd()
for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", os.environ.get("HOME", "/tmp")):
    for root, dirs, files in os.walk(d):
        for name in files:
            path = os.path.join(root, name)
            if not path.startswith(work + "/"):
                found.append(("file", path))
for name in os.listdir(work):
    if name != "main.py":
        found.append(("workdir", name))
if open(os.path.join(work, "main.py")).read() != open(__file__).read():
    found.append(("workdir", "main.py changed"))
with open("/proc/sysvipc/shm") as f:
    rows = f.read().splitlines()[1:]
found += [("shm", r) for r in rows]
print(repr(found))
"""


@pytest.fixture(autouse=True)
def host_is_clean() -> Iterator[None]:
    """The escape suite's host check is about the local and docker providers' sandboxes; the handler's runs
    are in their own namespace, checked by the next run itself."""
    yield


@pytest.fixture(scope="module", params=["http", "lambda"])
def handler(request: pytest.FixtureRequest) -> Iterator[HttpHandler | LambdaHandler]:
    h: HttpHandler | LambdaHandler = HttpHandler() if request.param == "http" else LambdaHandler()
    yield h
    h.close()


def run(h: HttpHandler | LambdaHandler, code: str) -> dict[str, object]:
    answer = h.run(call(code, wall_time_s=5)) if isinstance(h, HttpHandler) else h.invoke(call(code, wall_time_s=5))
    assert "result" in answer, answer
    r = answer["result"]
    assert isinstance(r, dict) and r["status"] == "ok", r
    return r


@needs_namespace
def test_nothing_a_tenant_leaves_reaches_the_next(handler: HttpHandler | LambdaHandler) -> None:
    first = run(handler, HOSTILE)
    planted, shm = str(first["stdout"]).split()
    assert int(planted) >= 3 and shm == "True"  # it did plant its traces (else this test proves nothing)
    found = ast.literal_eval(str(run(handler, LOOK)["stdout"]))
    assert found == [], found


@needs_namespace
def test_a_clean_run_finds_nothing_either(handler: HttpHandler | LambdaHandler) -> None:
    """The probe itself finds nothing in a fresh environment (so its empty list above means something)."""
    assert ast.literal_eval(str(run(handler, LOOK)["stdout"])) == []


@needs_namespace
def test_without_the_reset_the_probe_finds_the_traces() -> None:
    """EXECBOX_HANDLER_RESET=0 (a development mode): the same hostile run, and the probe finds its daemon,
    its files and its shared memory: what the reset removes is real."""
    h = HttpHandler(EXECBOX_HANDLER_RESET="0")
    try:
        run(h, HOSTILE)
        kinds = {kind for kind, _ in ast.literal_eval(str(run(h, LOOK)["stdout"]))}
        assert {"process", "file", "shm"} <= kinds, kinds
    finally:
        h.close()


# A tree deeper than PATH_MAX (4096 bytes: 20 names of 250), a file at its bottom, a level made unreadable:
# no path names its deepest entries, so only a reset that walks by descriptors can remove them.
DEEP_TREE = r"""
import os
os.chdir("/tmp")
for i in range(20):
    os.mkdir("d" * 250)
    os.chdir("d" * 250)
open("from-a", "w").write("left by tenant A")
os.chdir("..")
os.chmod("d" * 250, 0)
print(len(os.getcwd()))
"""


@needs_namespace
@pytest.mark.parametrize("kind", ["http", "lambda"])
def test_a_tree_deeper_than_path_max_is_removed(kind: str) -> None:
    """The reset empties a tree no path can name (it failed with ENAMETOOLONG: one tenant's run made the
    environment refuse every later call), and the next run finds nothing of it."""
    h: HttpHandler | LambdaHandler = HttpHandler() if kind == "http" else LambdaHandler()
    try:
        assert int(str(run(h, DEEP_TREE)["stdout"])) > 4096
        found = ast.literal_eval(str(run(h, LOOK)["stdout"]))
        assert found == [], found
    finally:
        h.close()


# The kernel's keyrings outlive processes: the uid's user and user-session keyrings (every tenant has the
# programs' uid), the session keyring a program inherits (the handler's own), the uid's persistent keyring.
KEYS = r"""
import ctypes, platform
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY, KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}[platform.machine()]
SPECS = {"session": -3, "user": -4, "user-session": -5}
def persistent():
    return libc.syscall(KEYCTL, 22, ctypes.c_int(-1), ctypes.c_int(-2))  # GET_PERSISTENT, own uid, into @p
if PLANT:
    spec = dict(SPECS, persistent=persistent())
    print(sorted(n for n, k in spec.items()
                 if libc.syscall(ADD_KEY, b"user", b"from-a", b"tenant A", 8, ctypes.c_int(k)) > 0))
else:
    spec = dict(SPECS, persistent=persistent())
    print(sorted(n for n, k in spec.items()
                 if libc.syscall(KEYCTL, 10, ctypes.c_int(k), b"user", b"from-a", 0) > 0))  # SEARCH
"""


@needs_namespace
def test_no_key_a_tenant_leaves_reaches_the_next(handler: HttpHandler | LambdaHandler) -> None:
    planted = ast.literal_eval(str(run(handler, "PLANT = True\n" + KEYS)["stdout"]))
    assert "user" in planted and "session" in planted, planted  # it did leave keys (else this proves nothing)
    found = ast.literal_eval(str(run(handler, "PLANT = False\n" + KEYS)["stdout"]))
    assert found == [], found


# Many daemons at once: SIGKILLed together, some are still dying (not yet zombies) when the reset first
# reaps, and zombies by the time it looks for survivors.
MANY_DAEMONS = r"""
import os, time
for _ in range(30):
    if os.fork() == 0:
        os.setsid()
        time.sleep(600)
        os._exit(0)
print("forked")
"""


@needs_namespace
def test_no_zombie_of_a_tenant_is_left_for_the_next(handler: HttpHandler | LambdaHandler) -> None:
    """Every process the reset killed is reaped before the next run (a zombie still shows as one of the
    programs' uid, and counts against their process limit)."""
    for _ in range(3):
        assert run(handler, MANY_DAEMONS)["stdout"] == "forked\n"
        found = ast.literal_eval(str(run(handler, LOOK)["stdout"]))
        assert found == [], found


# A POSIX message queue lives in the kernel's IPC namespace whether or not an mqueue filesystem is mounted
# (the reset empties /dev/mqueue where there is one; here, as on a service without it, there is none).
MQUEUE = r"""
import ctypes, os
rt = ctypes.CDLL("librt.so.1", use_errno=True)
if PLANT:
    q = rt.mq_open(b"/from-a", os.O_CREAT | os.O_RDWR, 0o600, None)
    print(q >= 0 and rt.mq_send(q, b"tenant A", 8, 0) == 0)
else:
    print(rt.mq_open(b"/from-a", os.O_RDONLY) >= 0)
"""


@needs_namespace
def test_no_message_queue_of_a_tenant_reaches_the_next(handler: HttpHandler | LambdaHandler) -> None:
    run(handler, "PLANT = True\n" + MQUEUE)
    assert run(handler, "PLANT = False\n" + MQUEUE)["stdout"] == "False\n"


# A daemon that stops every other process of its uid, over and over: the reset's kill must not be one.
STOPPER = r"""
import os, signal, time
if os.fork() == 0:
    os.setsid()
    for fd in (0, 1, 2):
        os.close(fd)
    while True:
        try:
            os.kill(-1, signal.SIGSTOP)
        except OSError:
            pass
time.sleep(0.2)
"""


@needs_namespace
def test_a_tenant_cannot_stop_the_reset() -> None:
    """Programs as a uid of their own (Cloud Run, Container Apps): the reset's kill comes from a child with
    their uid, which a daemon of theirs could SIGSTOP between its setuid and its kill: the reset then waited
    for it forever, the handler busy for good. Now the run ends (its own program stopped too: a timeout) and
    the next one finds nothing."""
    h = HttpHandler()
    h.client.timeout = httpx.Timeout(30)
    try:
        for _ in range(3):
            answer = h.run(call(STOPPER, wall_time_s=2))
            assert "result" in answer, answer
            found = ast.literal_eval(str(run(h, LOOK)["stdout"]))
            assert found == [], found
    finally:
        h.close()
