"""What isolation this host gives, in plain words, with the fix for anything missing or degraded."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

from execbox.errors import ExecboxError


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # ok | degraded | missing
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _bwrap_version() -> str | None:
    path = shutil.which("bwrap")
    if path is None:
        return None
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


async def _smoke() -> str | None:
    """Run /bin/true in a real sandbox; None on success, else the error."""
    from execbox.providers.base import ExecSpec, InstanceSpec
    from execbox.providers.local import LocalProvider

    try:
        provider = LocalProvider()
        async with await provider.start(InstanceSpec(disk_mb=8)) as inst:
            o = await inst.exec(ExecSpec(argv=("/bin/true",), wall_time_s=10, cpu_time_s=10, memory_mb=64,
                                         pids=16, output_bytes=4096, file_size_mb=1, open_files=64))
        return None if o.exit_code == 0 else f"/bin/true exited {o.exit_code}: {o.stderr.decode()[:200]}"
    except ExecboxError as e:
        return str(e)


def _docker_check() -> Check:
    """The docker provider's engine and images (the provider is optional: missing is not fatal elsewhere)."""
    from execbox.providers.docker import images

    try:
        api = images.client().api
        version = api.version().get("Version", "?")
        found = images.status()
    except ExecboxError as e:
        return Check("docker engine", "degraded", f"the docker provider cannot run: {e}",
                     "run scripts/bootstrap as root (installs docker.io, starts dockerd, builds the images)")
    missing = [name for name, (_, built) in found.items() if not built]
    if missing:
        return Check("docker engine", "degraded", f"dockerd {version}; images not built: {', '.join(missing)}",
                     "execbox images build")
    return Check("docker engine", "ok", f"dockerd {version}; {len(found)} images built ({', '.join(found)})")


def checks() -> list[Check]:
    from execbox.languages import default_registry
    from execbox.providers.host import cgroups, seccomp

    out: list[Check] = []
    version = _bwrap_version()
    out.append(Check("bubblewrap", "ok", version) if version else
               Check("bubblewrap", "missing", "bwrap is not installed: the local provider cannot run",
                     "apt-get install bubblewrap"))
    root = os.geteuid() == 0
    out.append(Check("dedicated uids", "ok", "sandboxes run as a dedicated unprivileged uid per execution")
               if root else Check("dedicated uids", "degraded",
                                  "not root: sandboxes run as your own uid (isolated by namespaces only)",
                                  "run execbox as root (it drops privileges for every sandbox)"))
    cg = cgroups.probe()
    if cg.usable:
        out.append(Check("cgroups", "ok", f"cgroup v{cg.version}: memory, pids and CPU accounting per execution"))
    else:
        out.append(Check("cgroups", "degraded", f"{cg.problem}; limits fall back to rlimits (address space, "
                         "per-process CPU, per-uid process count)", "run as root on a host with cgroup "
                         "memory, pids and cpu(acct) controllers"))
    problem = seccomp.available()
    out.append(Check("seccomp", "ok", "syscall filter built with libseccomp") if problem is None else
               Check("seccomp", "missing", f"cannot build the filter: {problem}", "apt-get install libseccomp2"))
    userns = "/proc/sys/user/max_user_namespaces"
    try:
        with open(userns) as f:
            n = int(f.read())
    except OSError:
        n = -1
    out.append(Check("user namespaces", "ok", f"max_user_namespaces={n}") if n != 0 else
               Check("user namespaces", "missing", "user namespaces are disabled",
                     "sysctl -w user.max_user_namespaces=15000"))
    if version and problem is None:
        err = asyncio.run(_smoke())
        out.append(Check("sandbox smoke test", "ok", "ran /bin/true in a full sandbox") if err is None else
                   Check("sandbox smoke test", "missing", err, "see the checks above; run scripts/bootstrap"))
    out.append(_docker_check())
    langs = list(default_registry())
    missing = [lang.name for lang in langs if not lang.available]
    out.append(Check("languages", "ok" if not missing else "degraded",
                     f"{len(langs) - len(missing)} of {len(langs)} available"
                     + (f"; missing: {', '.join(missing)}" if missing else ""),
                     "" if not missing else "run scripts/bootstrap as root"))
    return out
