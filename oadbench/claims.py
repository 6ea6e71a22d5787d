"""Run claims: one process at a time executes a given run, however many sweeps share a records directory.

Before executing, a run claims ``<record>.claim`` by creating it exclusively (``O_CREAT | O_EXCL``, atomic on
local and NFS v3+ file systems) with the owner's host, pid and start time; a daemon thread refreshes its
modification time every ``HEARTBEAT_S`` seconds while the run executes, and the claim is removed when the run
ends, finished or failed. A claim left behind by a killed process is stale and taken over by the next attempt:
on the same host when its pid is no longer alive, on any host when its heartbeat is older than ``STALE_AFTER_S``.
A run whose claim is held by a live owner is skipped by the others; rerunning the sweep later completes it if
the owner died without finishing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("oadbench")

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def claim_path(record: Path) -> Path:
    return Path(record).with_name(Path(record).name + ".claim")


class RunClaim:
    """Exclusive claim on one run. ``acquire()`` returns False when a live owner holds it; ``release()``
    removes it (only if it is still ours). Usable as a context manager after a successful ``acquire()``."""

    def __init__(self, record: Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S):
        self.path = claim_path(record)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.owner: dict[str, Any] | None = None  # the live holder when acquire() failed

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # create, or remove a stale claim and retry
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner is not None and not self._is_stale(owner):
                    self.owner = owner
                    return False
                log.warning("taking over the stale claim %s (owner %s)", self.path, (owner or {}).get("token"))
                self._remove_if(owner)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.time()}, f)
            self._thread = threading.Thread(target=self._beat, name="oadbench-claim", daemon=True)
            self._thread.start()
            return True
        owner = self._read()
        self.owner = owner
        return False

    def clear_stale(self) -> bool:
        """Remove a stale claim (see the module docstring) without taking one; a live owner's claim stays.
        Returns True when a claim was removed. For a finished run whose process died between writing its
        record and releasing its claim."""
        owner = self._read()
        if owner is None or not self._is_stale(owner):
            return False
        log.info("removing the stale claim %s beside a finished record", self.path)
        self._remove_if(owner)
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        owner = self._read()
        if owner is not None and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):  # unreadable or being written: judge by age alone
            try:
                return {"token": None, "mtime": self.path.stat().st_mtime}
            except OSError:
                return None
        try:
            data["mtime"] = self.path.stat().st_mtime
        except OSError:
            return None
        return data

    def _is_stale(self, owner: dict[str, Any]) -> bool:
        if time.time() - owner.get("mtime", 0.0) > self.stale_after_s:
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _pid_alive(owner["pid"])
        return False

    def _remove_if(self, owner: dict[str, Any] | None) -> None:
        """Remove the claim file if it still belongs to ``owner`` (another process may have replaced it)."""
        current = self._read()
        if current is None:
            return
        if owner is None or current.get("token") == owner.get("token"):
            self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
