"""Exclusive locks that keep two processes from writing the same files at once (a job started twice)."""

from __future__ import annotations

import fcntl


def lock_exclusively(fd: int) -> bool:
    """Take an exclusive ``flock`` on the open file (or folder) ``fd`` without waiting; it is held
    until ``fd`` is closed. False when another process holds it. True when taken, and also where
    the file system has no locks (Lustre mounted without ``flock``, NFS without lockd: ENOLCK),
    where the writes go on unguarded, as they would without this."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True
