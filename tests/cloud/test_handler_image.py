"""images/cloud-handler: built from execbox's own base (build.sh), then run as the services run it: the HTTP
handler as a container's pid 1 with Cloud Run's variables (root, programs as uid 1000, the reset on), and
the Lambda entry point as a non-root uid with Lambda's. Skipped without a docker daemon or without the base
image (``execbox images build`` makes it; building it here would take minutes). About a minute."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.cloud.handler_env import call
from tests.cloud.test_handler import DAEMON, LOOK_FOR_OTHERS

ROOT = Path(__file__).resolve().parents[2]


def _why_not() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no docker daemon"
    from execbox.providers.docker.images import Catalog

    base = Catalog.load(ROOT / "images").base_tag()
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode != 0:
        return f"the base image {base} is not built (execbox images build)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    tag = f"execbox/cloud-handler:test-{uuid.uuid4().hex[:8]}"
    built = subprocess.run([str(ROOT / "images" / "cloud-handler" / "build.sh"), tag], capture_output=True,
                           text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHON": sys.executable,
                                           "PYTHONPATH": str(ROOT / "src"), "HOME": "/root"}, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_http_handler_in_the_image(image: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"execbox-handler-test-{uuid.uuid4().hex[:8]}"
    env = {"PORT": str(port), "EXECBOX_HANDLER_HOST": "127.0.0.1", "K_SERVICE": "execbox", "K_REVISION": "execbox-1",
           "EXECBOX_HANDLER_TOKEN": "t0ken"}
    argv = ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "--entrypoint", "python",
            *(x for k, v in env.items() for x in ("-e", f"{k}={v}")), image, "-m", "execbox.providers.cloud.handler"]
    subprocess.run(argv, check=True, capture_output=True)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              headers={"Authorization": "Bearer t0ken"})
        deadline = time.monotonic() + 30
        while True:
            try:
                health = client.get("/health").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the handler in the image did not come up"
                time.sleep(0.2)
        # the reset is on (Cloud Run's variables), the programs run as uid 1000; the container has the
        # network (host networking here), so the handler says egress is open and runs network-on calls only
        assert health["ok"] and health["reset"] and health["service"] == "cloud-run" and health["programs_uid"] == 1000
        setuid = client.post("/run", json=call(
            "import os, stat\nprint([p for d in ('/usr/bin', '/bin', '/usr/sbin') for p in (os.path.join(d, n) "
            "for n in os.listdir(d)) if os.path.isfile(p) and os.stat(p).st_mode & 0o6000])", network=True)).json()
        assert setuid["result"]["stdout"] == "[]\n", setuid
        hello = client.post("/run", json=call("import os\nprint('hi', os.getuid())", network=True)).json()
        assert hello["result"]["stdout"] == "hi 1000\n", hello
        assert client.post("/run", json=call("print(1)")).json()["error"]["code_run"] is False  # network off
        assert client.post("/run", json=call(DAEMON, network=True)).json()["result"]["status"] == "ok"
        others = client.post("/run", json=call(LOOK_FOR_OTHERS, network=True)).json()["result"]["stdout"]
        assert [cmd for _, cmd in eval(others) if "ps" not in cmd] == [], others
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_lambda_entry_point_in_the_image(image: str) -> None:
    cmd = json.loads(subprocess.run(["docker", "image", "inspect", image, "--format", "{{json .Config}}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert cmd["Entrypoint"][-2:] == ["-m", "awslambdaric"]
    handler_path = cmd["Cmd"][0]
    module, _, function = handler_path.rpartition(".")
    # the runtime imports the CMD's module and calls its function with (event, context), as here
    driver = (f"import importlib, json, sys\nfn = getattr(importlib.import_module({module!r}), {function!r})\n"
              "import awslambdaric\n"
              "class C:\n    def get_remaining_time_in_millis(self): return 30000\n"
              "print(json.dumps(fn(json.loads(sys.stdin.read()), C())))\n")
    env = ["-e", "AWS_LAMBDA_FUNCTION_NAME=execbox", "-e", "AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001",
           "-e", "EXECBOX_HANDLER_EGRESS=none"]
    ran = subprocess.run(["docker", "run", "-i", "--rm", "--network", "none", "--user", "993:993", *env,
                          "--entrypoint", "python", image, "-c", driver],
                         input=json.dumps(call("import os\nprint('from lambda', os.getuid())")),
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"]["stdout"] == "from lambda 993\n", ran.stdout
