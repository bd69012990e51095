# SPDX-License-Identifier: GPL-3.0-or-later
"""Read leases: keeping a file whole while its pages are mapped into memory.

A process that reads a file through a memory mapping is killed (SIGBUS) when another process
cuts the file short under it. Linux's file leases (``fcntl(2)``, ``F_SETLEASE``) prevent that:
while this process holds a *read lease* on a file, any process of this machine that opens the
file for writing or truncates it waits, up to ``/proc/sys/fs/lease-break-time`` (45 s by
default), until the lease is released; meanwhile ``F_GETLEASE`` no longer reports the lease
as held, so the holder knows to stop using its mappings. A lease lives with the open file
description it was taken on, so it is released when the last descriptor of that description
(a memory mapping keeps a duplicate) is closed.

The kernel grants a read lease only:

* on a file this process owns (or with ``CAP_LEASE``);
* when no process has the file open for writing, nor a lease break is under way;
* on file systems that implement leases.

Leases only hold back processes of this machine: a writer on another host of a network or
cluster file system (NFS, GPFS, Lustre, BeeGFS, CephFS, ...) is not held back by them. Leases
are therefore taken here only on the local file systems of :data:`LOCAL_FILE_SYSTEMS`, found in
``/proc/self/mountinfo`` (``proc(5)``).

How long the kernel makes a writer wait is a system setting (``lease-break-time``); where it is
set below :data:`MIN_LEASE_BREAK_TIME_S`, a lease would not protect an image being processed, and
none is taken.

The kernel announces a lease break with a signal (``SIGIO`` unless ``F_SETSIG`` names
another), whose default action would terminate the process. Leases are taken here with
``SIGURG``, whose default action is to ignore it: nothing needs to catch it, since the holder
asks :func:`lease_held` before it uses a mapping.
"""

import errno
import fcntl
import functools
import os
import signal

LOCAL_FILE_SYSTEMS: frozenset[str] = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})
"""File systems on which read leases are taken: local ones, whose every writer is a process
of this machine."""

MIN_LEASE_BREAK_TIME_S: int = 5
"""The shortest ``/proc/sys/fs/lease-break-time`` (s) with which leases are taken: a writer
waits at most that long for the monitor's mappings to go."""

LEASE_BREAK_TIME_FILE = "/proc/sys/fs/lease-break-time"

_LEASE_SIGNAL = signal.SIGURG

_REFUSALS = {
    errno.EAGAIN: "a process has it open for writing, or wants to",
    errno.EACCES: "this user does not own it",
    errno.EPERM: "this user does not own it",
    errno.EINVAL: "its file system does not support leases",
    errno.ENOLCK: "the kernel has no lease to spare",
}


class LeaseRefusedError(Exception):
    """A read lease cannot be taken on a file; the message says why (one line)."""


def take_read_lease(fd: int) -> int:
    """Opens a new read-only description of the file open as ``fd`` and takes a read lease on
    it.

    Args:
        fd: an open descriptor of a regular file (any access mode).

    Returns:
        The new descriptor (close-on-exec), which holds the lease until it and every
        duplicate of it (a memory mapping's, for example) are closed.

    Raises:
        LeaseRefusedError: when the file is not on a local file system, the kernel's
            lease-break time is too short, or the kernel refuses the lease
            (:func:`fcntl.fcntl` errors, named).
    """
    try:
        device = os.fstat(fd).st_dev
    except OSError as error:
        raise LeaseRefusedError(f"cannot be inspected: {error.strerror}")
    kind = file_system_type(device)
    if kind not in LOCAL_FILE_SYSTEMS:
        raise LeaseRefusedError(f"it is on a file system of type {kind!r}, not a local one "
                                f"({', '.join(sorted(LOCAL_FILE_SYSTEMS))})")
    waited = lease_break_time_s()
    if waited < MIN_LEASE_BREAK_TIME_S:
        raise LeaseRefusedError(f"the kernel's lease-break time ({LEASE_BREAK_TIME_FILE}) is "
                                f"{waited} s, under {MIN_LEASE_BREAK_TIME_S} s")
    try:
        # The same file (inode) as fd, even when its name was since given to another file.
        leased = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise LeaseRefusedError(f"cannot be reopened: {error.strerror}")
    try:
        fcntl.fcntl(leased, fcntl.F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(leased, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        os.close(leased)
        reason = _REFUSALS.get(error.errno, error.strerror)
        raise LeaseRefusedError(f"no read lease: {reason}")
    return leased


def lease_held(fd: int) -> bool:
    """True while the read lease taken on ``fd`` holds: no process has asked to write or
    truncate the file since (a lease break), and ``fd`` is open."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def lease_break_time_s() -> int:
    """The kernel's lease-break time, s (:data:`LEASE_BREAK_TIME_FILE`), read once per
    process (reading it costs half as much as mapping an image); 0 when it cannot be read."""
    try:
        with open(LEASE_BREAK_TIME_FILE, encoding="ascii") as setting:
            return int(setting.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@functools.lru_cache(maxsize=64)
def file_system_type(device: int) -> str:
    """The type (``ext4``, ``nfs4``, ``gpfs``, ...) of the mounted file system whose device
    number is ``device`` (``os.stat().st_dev``), from ``/proc/self/mountinfo``; ``"unknown"``
    when no mount has that number (a btrfs subvolume's files, for example) or the table cannot
    be read."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                # "id parent major:minor root mount-point options [optional...] - type ..."
                fields = line.split()
                if len(fields) > 3 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return "unknown"
