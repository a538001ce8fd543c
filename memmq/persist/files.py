"""
The files of the persistence directory, as the writer thread sees them:
open (at most L{MAX_OPEN} at a time), append a batch, fsync, close.

Everything here blocks, and runs in the writer's thread (or, once that
thread has stopped, in the reactor thread at shutdown), never in both at
once: the writer hands it one batch at a time.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

__all__ = ["Files", "MAX_OPEN", "Outcome"]

MAX_OPEN = 128

_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_sync = getattr(os, "fdatasync", os.fsync)


class Outcome:
    """
    What became of one file's part of a batch: written (and synced, if
    asked), or the reason it was not.
    """

    __slots__ = ("path", "error")

    def __init__(self, path: str, error: str | None = None) -> None:
        self.path = path
        self.error = error


class Files:
    """
    The open files of one directory, least recently used closed first.
    """

    def __init__(self, directory: str, max_open: int = MAX_OPEN) -> None:
        self.directory = directory
        self._max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()

    def write(self, batch: dict[str, bytes], sync: bool) -> dict[str, Outcome]:
        """
        Append each file's bytes (C{batch} maps file name to data); with
        C{sync}, fsync every file written (and the directory, when a file
        was created) before returning.  A failure is one file's alone.
        """
        outcomes: dict[str, Outcome] = {}
        written: list[tuple[str, int]] = []
        created = False
        for name, data in batch.items():
            path = os.path.join(self.directory, name)
            try:
                fd, new = self._open(name, path)
                created |= new
                self._append(name, fd, data)
                written.append((name, fd))
                outcomes[name] = Outcome(path)
            except OSError as e:
                outcomes[name] = Outcome(path, _reason(e))
        if sync:
            # Written first, synced after: the disk works on all at once.
            for name, fd in written:
                try:
                    _sync(fd)
                except OSError as e:
                    # After a failed fsync the kernel may have dropped the
                    # dirty pages: what was written is not known to be there.
                    outcomes[name].error = _reason(e)
                    self._close(name)
            if created:
                try:
                    self._sync_directory()
                except OSError as e:
                    for name, _ in written:
                        outcomes[name].error = outcomes[name].error or _reason(e)
        return outcomes

    def _open(self, name: str, path: str) -> tuple[int, bool]:
        fd = self._fds.get(name)
        if fd is not None:
            # A file renamed or removed (rotated away, or its directory
            # deleted) would swallow whatever we wrote to it: open the name
            # again.  Two system calls per file per batch.
            if _same_file(fd, path):
                self._fds.move_to_end(name)
                return fd, False
            self._close(name)
        created = True
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o660)
        except FileExistsError:
            created = False
            fd = os.open(path, _OPEN_FLAGS)
        try:
            self._end_line(fd)
        except OSError:
            os.close(fd)
            raise
        self._fds[name] = fd
        while len(self._fds) > self._max_open:
            self._close(next(iter(self._fds)))
        return fd, created

    @staticmethod
    def _end_line(fd: int) -> None:
        """
        Finish a torn last line (a crash in mid-write, ours or asim/mq's) so
        that our first line does not join it.
        """
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")

    def _append(self, name: str, fd: int, data: bytes) -> None:
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            # Take back a partial batch (a full disk), so the file holds
            # whole lines only.
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            self._close(name)
            raise

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close_all(self, sync: bool) -> None:
        """
        Close every file, fsyncing each first if asked (a clean shutdown).
        """
        for name in list(self._fds):
            if sync:
                try:
                    _sync(self._fds[name])
                except OSError:
                    pass
            self._close(name)


def _same_file(fd: int, path: str) -> bool:
    """
    Whether C{path} still names the file open as C{fd}.
    """
    try:
        named = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev)


def _reason(error: OSError) -> str:
    text = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        text = "no space left on the device"
    return text
