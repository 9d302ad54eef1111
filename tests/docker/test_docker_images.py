"""The image catalog (data): content-hash tags and the binary -> image mapping. No dockerd needed."""

from __future__ import annotations

import shutil
from pathlib import Path

from execbox.providers.docker.images import Catalog, default_images_dir, host_mirror


def test_every_image_has_a_dockerfile_and_binaries() -> None:
    catalog = Catalog.load()
    assert {"python", "node", "gcc", "java", "shell"} <= set(catalog.images)
    for image in catalog.images.values():
        assert image.dockerfile.is_file() and image.binaries and image.official


def test_binaries_pick_images() -> None:
    catalog = Catalog.load()
    picks = {b: getattr(catalog.for_binary(b), "name", None) for b in ("python3", "/usr/bin/python3", "node",
                                                                       "gcc", "g++", "javac", "java", "bash", "go")}
    assert picks == {"python3": "python", "/usr/bin/python3": "python", "node": "node", "gcc": "gcc",
                     "g++": "gcc", "javac": "java", "java": "java", "bash": "shell", "go": None}


def test_tags_are_content_hashes(tmp_path: Path) -> None:
    shutil.copytree(default_images_dir(), tmp_path / "images")
    before = {n: Catalog.load(tmp_path / "images").tag(n) for n in ("python", "node")}
    assert before["python"] == Catalog.load(default_images_dir()).tag("python")
    dockerfile = tmp_path / "images" / "python" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN true\n")
    after = Catalog.load(tmp_path / "images")
    assert after.tag("python") != before["python"]  # changed definition: a new tag, rebuilt
    assert after.tag("node") == before["node"]  # the others are untouched
    assert after.tag("python", official=True) != after.tag("python")


def test_the_mirror_comes_from_the_host() -> None:
    assert host_mirror("http://fallback/debian").startswith("http")
