# SPDX-License-Identifier: GPL-3.0-or-later
"""Frame slots in shared memory, for handing frames between processes of one host.

A segment is a file in ``/dev/shm`` (a RAM file system on Linux; the system's temporary folder
elsewhere) holding a 4096-byte header and ``n_slots`` slots of ``slot_bytes`` bytes each. The
receiving process creates it, writes a random token in the header and tells the sending process
the path and the token; the sender attaches to it and checks the token, which proves that both
see the same memory (a sender on another host finds no file or another token, and falls back to
sending frames over the network). The file is unlinked as soon as the sender has attached, so
nothing is left behind when a process dies; the mappings stay valid until both processes close
them.

The sender maps and unlinks only a file that is plainly a segment of this program's user: a
name made by :meth:`SharedFrameSlots.create` (prefix, process id, random part) in the shared
memory folder, opened without following a symbolic link, a regular file with one link, owned
by this user, mode 0600 (checked on the opened descriptor, so nothing can be swapped in between).
Anything else raises :class:`UnsafeSegmentError` and is left alone.

Writing into a slot and handing its index over a ZeroMQ socket (a system call, a full memory
barrier) makes the slot's bytes visible to the receiver; the receiver hands the index back when
it no longer reads the slot. That ownership protocol is the caller's (see
:mod:`om.data_retrieval_layer.frame_distribution`).
"""

import mmap
import os
import re
import secrets
import stat
import tempfile

import numpy as np

_HEADER_BYTES = 4096
_TOKEN_BYTES = 16


def _shared_memory_folder() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class UnsafeSegmentError(ValueError):
    """A path that is not one of this user's segments (see the module doc): never mapped,
    never unlinked."""


def _check_segment_name(path: str, prefix: str) -> None:
    """Raises UnsafeSegmentError unless ``path`` is a name :meth:`SharedFrameSlots.create`
    makes with ``prefix`` in the shared memory folder."""
    folder, name = os.path.split(path)
    if (folder != _shared_memory_folder()
            or not re.fullmatch(re.escape(prefix) + r"_[0-9]{1,10}_[0-9a-f]{12}", name)):
        raise UnsafeSegmentError(f"{path[:200]!r} is not a {prefix} segment in "
                                 f"{_shared_memory_folder()}")


def _check_segment_file(path: str, fd: int) -> os.stat_result:
    """Raises UnsafeSegmentError unless the open file ``fd`` is a regular file with one link,
    owned by this user, mode 0600; returns its status."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        raise UnsafeSegmentError(f"{path}: not a regular file with one link")
    if status.st_uid != os.geteuid():
        raise UnsafeSegmentError(f"{path}: owned by uid {status.st_uid}, not {os.geteuid()}")
    if stat.S_IMODE(status.st_mode) != 0o600:
        raise UnsafeSegmentError(f"{path}: mode {stat.S_IMODE(status.st_mode):o}, not 600")
    return status


class SharedFrameSlots:
    """``n_slots`` byte slots of ``slot_bytes`` bytes in a shared-memory file.

    Use :meth:`create` (the receiver) or :meth:`attach` (the sender), not the constructor.

    Attributes:
        path: the segment's file path (gone once unlinked).
        token: the random bytes in the header that identify the segment.
        n_slots: the number of slots.
        slot_bytes: the size of each slot, bytes.
    """

    def __init__(self, path: str, fd: int, n_slots: int, slot_bytes: int, token: bytes) -> None:
        self.path = path
        self.n_slots = n_slots
        self.slot_bytes = slot_bytes
        self.token = token
        try:
            status = os.fstat(fd)
            self._file_id = (status.st_dev, status.st_ino)  # unlink() removes only this file
            self._map: mmap.mmap | None = mmap.mmap(fd, _HEADER_BYTES + n_slots * slot_bytes)
        finally:
            os.close(fd)  # the mapping keeps the memory; the descriptor is not needed
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)

    @classmethod
    def create(cls, n_slots: int, slot_bytes: int, prefix: str = "om_frames") -> "SharedFrameSlots":
        """Creates a new segment with its memory reserved up front.

        Args:
            n_slots: number of slots (>= 1).
            slot_bytes: bytes per slot (>= 1).
            prefix: start of the file name.

        Raises:
            OSError: when the file cannot be made or the memory cannot be reserved (e.g. a
                full ``/dev/shm``: reserved here, so a full RAM file system is an error now,
                not a SIGBUS at the first write).
        """
        token = secrets.token_bytes(_TOKEN_BYTES)
        path = os.path.join(_shared_memory_folder(),
                            f"{prefix}_{os.getpid()}_{secrets.token_hex(6)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: attach() requires exactly 0600
            size = _HEADER_BYTES + n_slots * slot_bytes
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:
                os.ftruncate(fd, size)
            os.pwrite(fd, token, 0)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(path, fd, n_slots, slot_bytes, token)

    @classmethod
    def attach(cls, path: str, n_slots: int, slot_bytes: int, token: bytes,
               prefix: str = "om_frames") -> "SharedFrameSlots":
        """Maps an existing segment after checking that it is one (module doc), its size and
        its token.

        Args:
            path: the segment's path, as its creator announced it.
            n_slots: number of slots announced.
            slot_bytes: bytes per slot announced.
            token: the token announced.
            prefix: the prefix the creator used.

        Raises:
            FileNotFoundError: when the file is absent (e.g. the creator runs on another host).
            UnsafeSegmentError: when the path or the file is not one of this user's segments
                (another name or folder, a symbolic link, another owner or mode, hard links,
                or a file that cannot be opened).
            ValueError: when its size or token is not the creator's.
        """
        _check_segment_name(path, prefix)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as error:  # ELOOP: a symbolic link; EACCES: another user's file
            raise UnsafeSegmentError(f"{path}: cannot be opened as a segment ({error.strerror})")
        try:
            size = _check_segment_file(path, fd).st_size
            if size != _HEADER_BYTES + n_slots * slot_bytes:
                raise ValueError(f"shared memory {path}: {size} bytes, expected "
                                 f"{_HEADER_BYTES + n_slots * slot_bytes}")
            if os.pread(fd, _TOKEN_BYTES, 0) != token:
                raise ValueError(f"shared memory {path}: not the segment announced (token)")
        except (OSError, ValueError):
            os.close(fd)
            raise
        return cls(path, fd, n_slots, slot_bytes, token)

    def slot(self, index: int) -> np.ndarray:
        """Returns slot ``index`` as a writable uint8 array of ``slot_bytes`` bytes.

        Raises:
            IndexError: for an index outside ``[0, n_slots)``.
        """
        if not 0 <= index < self.n_slots:
            raise IndexError(f"slot {index} outside [0, {self.n_slots})")
        start = _HEADER_BYTES + index * self.slot_bytes
        return self._bytes[start:start + self.slot_bytes]

    def unlink(self) -> None:
        """Removes the file, unless another file has taken its name; the mappings stay valid
        (idempotent)."""
        try:
            status = os.stat(self.path, follow_symlinks=False)
            if (status.st_dev, status.st_ino) == self._file_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unmaps the segment, unless arrays still view it (then it goes with them)."""
        if self._map is None:
            return
        self._bytes = np.empty(0, dtype=np.uint8)
        try:
            self._map.close()
        except BufferError:  # a slot view is still alive; the mapping goes with it
            pass
        self._map = None
