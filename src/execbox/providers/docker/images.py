"""The docker provider's runtime images: a catalog read from ``images/images.toml``, content-hash tags, and the
build (a debootstrap'd Debian imported as the base, then one ``docker build`` per runtime image).

Public base images are not needed: ``debootstrap --variant=minbase`` fetches Debian from the host's apt
mirror and ``docker import`` turns it into ``execbox/base:<hash>``; each runtime image is built ``FROM`` it.
With ``official=True`` the runtime images are built ``FROM`` the public images named in the catalog instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execbox.errors import ProviderUnavailable, SandboxError

REPOSITORY = "execbox"
LABEL = "io.execbox.image"
CACHE_DIR = Path(os.environ.get("EXECBOX_IMAGE_CACHE", "/var/cache/execbox"))
SANDBOX_USER = "1000:1000"


def default_images_dir() -> Path:
    """``EXECBOX_IMAGES_DIR``, else the repository's ``images/`` (beside ``src/``)."""
    if env := os.environ.get("EXECBOX_IMAGES_DIR"):
        return Path(env)
    return Path(__file__).resolve().parents[4] / "images"


@dataclass(frozen=True)
class ImageDef:
    name: str
    binaries: tuple[str, ...]
    official: str
    dockerfile: Path


@dataclass(frozen=True)
class Catalog:
    root: Path
    base: dict[str, Any]
    images: dict[str, ImageDef]

    @classmethod
    def load(cls, root: Path | None = None) -> Catalog:
        root = root or default_images_dir()
        try:
            data = tomllib.loads((root / "images.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ProviderUnavailable(f"cannot read the docker image catalog {root / 'images.toml'}: {e} "
                                      "(set EXECBOX_IMAGES_DIR to the repository's images/ directory)") from e
        images = {
            name: ImageDef(name, tuple(d.get("binaries", ())), d.get("official", ""), root / name / "Dockerfile")
            for name, d in data.get("images", {}).items()
        }
        return cls(root, data.get("base", {}), images)

    # ------------------------------------------------------------------ tags
    def base_tag(self) -> str:
        definition = {k: v for k, v in self.base.items() if k not in ("mirror", "official")}
        digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:12]
        return f"{REPOSITORY}/base:{digest}"

    def tag(self, name: str, official: bool = False) -> str:
        image = self.images[name]
        try:
            dockerfile = image.dockerfile.read_bytes()
        except OSError as e:
            raise ProviderUnavailable(f"cannot read {image.dockerfile}: {e}") from e
        base = image.official if official else self.base_tag()
        digest = hashlib.sha256(base.encode() + b"\0" + dockerfile).hexdigest()[:12]
        return f"{REPOSITORY}/{name}:{digest}"

    def for_binary(self, binary: str) -> ImageDef | None:
        base = os.path.basename(binary)
        for image in self.images.values():
            if base in image.binaries:
                return image
        return None


def host_mirror(default: str) -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line format), else ``default``."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1)
            if "security" not in uri and uri.rstrip("/").endswith("/debian"):
                return uri
    return default


def client(host: str | None = None) -> Any:
    """A docker SDK client of the engine at ``host`` (default: DOCKER_HOST or the local socket), or
    ProviderUnavailable with the fix."""
    try:
        import docker
    except ImportError as e:
        raise ProviderUnavailable("the docker provider needs the docker SDK: pip install 'execbox[docker]'") from e
    try:
        c = docker.DockerClient(base_url=host, timeout=120) if host else docker.from_env(timeout=120)
        c.ping()
    except Exception as e:
        raise ProviderUnavailable(f"the Docker engine is not reachable ({e}); start dockerd "
                                  "(scripts/bootstrap starts it) or set DOCKER_HOST") from e
    return c


def image_exists(api: Any, tag: str) -> bool:
    import docker.errors

    try:
        api.inspect_image(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


Log = Callable[[str], None]


def build_base(catalog: Catalog, api: Any, log: Log) -> str:
    tag = catalog.base_tag()
    if image_exists(api, tag):
        log(f"base: {tag} is up to date")
        return tag
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists()
                                                  else None)
    if debootstrap is None:
        raise SandboxError("building the base image needs debootstrap: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise SandboxError("building the base image with debootstrap needs root")
    suite, variant = catalog.base.get("suite", "bookworm"), catalog.base.get("variant", "minbase")
    mirror = host_mirror(catalog.base.get("mirror", "http://deb.debian.org/debian"))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"base: debootstrap --variant={variant} {suite} from {mirror} (a few minutes)")
        argv = [debootstrap, f"--variant={variant}", suite, str(rootfs), mirror]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            last: list[str] = []
            for line in proc.stdout:
                line = line.rstrip()
                last = [*last[-20:], line]
                if line.startswith(("I: Retrieving", "I: Extracting", "I: Installing", "I: Configuring",
                                    "I: Base system", "E:", "W:")):
                    log(f"base: {line}")
        if proc.returncode != 0:
            raise SandboxError(f"debootstrap failed ({proc.returncode}): " + "\n".join(last))
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        log("base: packing the root filesystem")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        log(f"base: docker import -> {tag}")
        repo, _, version = tag.partition(":")
        api.import_image_from_file(str(tarball), repository=repo, tag=version,
                                   changes=['CMD ["/bin/bash"]', f'LABEL {LABEL}="base"'])
    return tag


def _official_dockerfile(image: ImageDef) -> str:
    return (f"FROM {image.official}\n"
            "RUN id -u 1000 >/dev/null 2>&1 || useradd --uid 1000 --user-group --no-create-home "
            "--home-dir /tmp --shell /bin/bash sandbox\n")


def build_image(catalog: Catalog, api: Any, name: str, log: Log, *, official: bool = False,
                force: bool = False) -> str:
    image = catalog.images[name]
    tag = catalog.tag(name, official)
    if not force and image_exists(api, tag):
        log(f"{name}: {tag} is up to date")
        return tag
    log(f"{name}: building {tag}" + (f" from {image.official}" if official else ""))
    with tempfile.TemporaryDirectory(prefix="execbox-build-") as ctx:
        dockerfile = _official_dockerfile(image) if official else image.dockerfile.read_text()
        (Path(ctx) / "Dockerfile").write_text(dockerfile)
        stream = api.build(path=ctx, tag=tag, buildargs={} if official else {"BASE": catalog.base_tag()},
                           network_mode="host", rm=True, forcerm=True, decode=True, pull=official,
                           labels={LABEL: name})
        for chunk in stream:
            if "error" in chunk:
                raise SandboxError(f"building {name} failed: {chunk['error'].strip()}")
            text = chunk.get("stream", "").strip()
            if text and (text.startswith("Step ") or not text.startswith("--->")):
                for line in text.splitlines():
                    log(f"{name}: {line}")
    return tag


def build(names: Iterable[str] | None = None, *, official: bool = False, force: bool = False,
          log: Log = print, catalog: Catalog | None = None) -> dict[str, str]:
    """Build the base (unless ``official``) and the named runtime images (all by default) that are missing.
    Returns name -> tag."""
    catalog = catalog or Catalog.load()
    wanted = list(names or catalog.images)
    if unknown := [n for n in wanted if n not in catalog.images]:
        raise SandboxError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(catalog.images)}")
    api = client().api
    if not official and any(force or not image_exists(api, catalog.tag(n)) for n in wanted):
        build_base(catalog, api, log)
    return {n: build_image(catalog, api, n, log, official=official, force=force) for n in wanted}


def status(catalog: Catalog | None = None) -> dict[str, tuple[str, bool]]:
    """name -> (tag, built?) for the base and every runtime image."""
    catalog = catalog or Catalog.load()
    api = client().api
    out = {"base": (catalog.base_tag(), image_exists(api, catalog.base_tag()))}
    for name in catalog.images:
        out[name] = (catalog.tag(name), image_exists(api, catalog.tag(name)))
    return out
