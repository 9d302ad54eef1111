"""Host-side file access into a live sandbox's workdir that cannot be led out of it.

A program running in the sandbox may, at any moment, replace any path in its workdir with a symlink to
``/etc/shadow`` or to ``/``, or swap a directory for a symlink between two of the host's steps. Every
operation here therefore resolves paths with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV)`` relative to a descriptor of the workdir held for the instance's life: the kernel resolves
the whole path atomically and fails (EXDEV/ELOOP) when any step would leave the workdir, whatever the program
does meanwhile. Symlinks that stay inside the workdir are followed (``ln -s data.csv latest.csv`` works);
the last component is never followed when writing (O_NOFOLLOW), and only regular files are read.
Linux >= 5.6 (openat2); on older kernels ``available()`` says so and the provider refuses persistent
sandboxes rather than fall back to a racy path check.
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import errno
import os
import posixpath
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from execbox.errors import SandboxError
from execbox.providers.base import ExecSpec, FileEntry, Instance, OutputChunk, ProcessOutcome, stream_run

SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine, 437)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = RESOLVE) -> int:
    """openat2(2): a descriptor of ``path`` resolved beneath ``dirfd``; OSError otherwise."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    fd = _libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{path}: {os.strerror(e)}")
    return int(fd)


def available() -> str | None:
    """None when openat2 with RESOLVE_BENEATH works here, else why not."""
    try:
        fd = openat2(os.open("/", os.O_PATH | os.O_DIRECTORY), ".", os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        return f"openat2(RESOLVE_BENEATH) is unavailable (Linux >= 5.6 needed): {e}"
    os.close(fd)
    return None


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # file | dir | symlink | other
    size: int


class Workdir:
    """A workdir, by descriptor. Paths are relative ("a/b.txt"; "" or "." is the workdir itself)."""

    def __init__(self, path: str, owner: int | None) -> None:
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.owner = owner  # files and directories the host creates are given to this uid (None: kept)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _dir(self, rel: str, create: bool) -> int:
        """A descriptor of directory ``rel``, made (component by component, each resolved beneath the
        workdir) when ``create``."""
        rel = posixpath.normpath(rel or ".")
        if not create or rel == ".":
            return openat2(self.fd, rel, os.O_RDONLY | os.O_DIRECTORY)
        fd = openat2(self.fd, ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in rel.split("/"):
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
                nxt = openat2(fd, part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                os.close(fd)
                fd = nxt
                if made and self.owner is not None:
                    os.fchown(fd, self.owner, self.owner)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def write(self, rel: str, data: bytes) -> None:
        parent, name = posixpath.split(posixpath.normpath(rel))
        dfd = self._dir(parent, create=True)
        try:
            fd = openat2(dfd, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        finally:
            os.close(dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # e.g. a FIFO the program planted
                raise OSError(errno.EINVAL, f"{rel}: not a regular file")
            if self.owner is not None:
                os.fchown(fd, self.owner, self.owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def read(self, rel: str, max_bytes: int) -> bytes | None:
        """The file's first ``max_bytes``, or None when it does not exist, is not a regular file, or lies
        (through symlinks) outside the workdir."""
        try:
            fd = openat2(self.fd, posixpath.normpath(rel), os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks, left = [], max_bytes
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def list(self, rel: str) -> list[Entry]:
        """The entries of directory ``rel`` (symlinks reported as such, never followed)."""
        fd = self._dir(rel, create=False)
        try:
            out = []
            for name in sorted(os.listdir(fd)):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                kind = ("file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                        else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
                out.append(Entry(name, kind, st.st_size if kind == "file" else 0))
            return out
        finally:
            os.close(fd)

    def remove(self, rel: str) -> bool:
        """Remove a file, a symlink (not its target) or a directory tree. False when nothing was there."""
        parent, name = posixpath.split(posixpath.normpath(rel))
        if name in ("", ".", ".."):
            raise OSError(errno.EINVAL, f"{rel}: cannot remove the workdir itself")
        try:
            dfd = self._dir(parent, create=False)
        except FileNotFoundError:
            return False
        try:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if stat.S_ISDIR(st.st_mode):
                # fd-based walk that never follows symlinks (shutil.rmtree.avoids_symlink_attacks)
                assert shutil.rmtree.avoids_symlink_attacks
                shutil.rmtree(name, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
            return True
        finally:
            os.close(dfd)



class WorkdirInstance(Instance):
    """A persistent sandbox (local or docker) whose workdir the host reaches through a ``Workdir`` and whose
    execs report output chunks to a callback: the ``Instance`` methods over those two, once. File
    operations run off the event loop, the host's OSErrors as SandboxError."""

    @abc.abstractmethod
    def _files(self) -> Workdir:
        """The workdir; SandboxError when the sandbox is closed or gone."""

    @abc.abstractmethod
    async def _run(self, spec: ExecSpec, on_chunk: Callable[[OutputChunk], None] | None) -> ProcessOutcome:
        """Run one exec, calling ``on_chunk`` with its output as it comes."""

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        return await self._run(spec, None)

    def stream(self, spec: ExecSpec) -> AsyncIterator[OutputChunk | ProcessOutcome]:
        return stream_run(lambda on_chunk: self._run(spec, on_chunk))

    async def write_files(self, data: Mapping[str, bytes]) -> None:
        wd = self._files()
        for rel, content in data.items():
            try:
                await asyncio.to_thread(wd.write, rel, content)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise SandboxError("the files do not fit in the sandbox's disk limit") from e
                raise SandboxError(f"cannot write {rel!r}: {e.strerror or e}") from e

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        return await asyncio.to_thread(self._files().read, path, max_bytes)

    async def list_files(self, path: str) -> list[FileEntry]:
        try:
            entries = await asyncio.to_thread(self._files().list, path)
        except OSError as e:
            raise SandboxError(f"cannot list {path!r}: {e.strerror or e}") from e
        return [FileEntry(e.name, e.kind, e.size) for e in entries]

    async def remove_file(self, path: str) -> bool:
        try:
            return await asyncio.to_thread(self._files().remove, path)
        except OSError as e:
            raise SandboxError(f"cannot remove {path!r}: {e.strerror or e}") from e
