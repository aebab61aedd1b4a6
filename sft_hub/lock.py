"""One writer per run directory: an exclusive lock file holding the writer's pid and host.

`train`, `export --merge` into a run and anything else that writes a run dir holds `RunLock(run_dir)`
for as long as it writes. A second writer gets a `RunError` naming the holder (pid, host, command,
since when). A lock left by a process that died (same host, pid no longer alive) is stale: it is
reported and taken over. A lock from another host cannot be checked from here, so it is refused
with the file to delete once the user knows that run is gone.

The lock is a file created with O_EXCL (atomic on local file systems and NFSv3+), not `flock`,
so that it is visible to users (`cat <run>/.sft-hub.lock`) and to other hosts sharing the folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
from pathlib import Path

from sft_hub.errors import RunError

log = logging.getLogger("sft_hub")
LOCK = ".sft-hub.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
            f"since {holder.get('since', '?')})")


def read_holder(run_dir: Path) -> dict | None:
    """The lock's contents, or None when the run dir is not locked."""
    try:
        return json.loads((Path(run_dir) / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a half-written lock (its writer died while writing it): treated as unknown holder


class RunLock:
    """Context manager: `with RunLock(run_dir, "train"):` creates the run dir if needed and locks it.

    On exit the lock file is removed, and a run dir that this lock created and that is still empty is
    removed too (a failed start leaves nothing behind).
    """

    def __init__(self, run_dir: str | Path, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self.path = self.run_dir / LOCK
        self._created: list[Path] = []  # folders this lock created, deepest first
        self._held = False

    def acquire(self) -> "RunLock":
        if not self.run_dir.exists():
            self._created = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
            self.run_dir.mkdir(parents=True)
        elif not self.run_dir.is_dir():
            raise RunError(f"{self.run_dir}: exists and is not a folder")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "since": dt.datetime.now().isoformat(timespec="seconds"), "argv": " ".join(sys.argv[:4])}
        for _ in range(2):  # second try after taking over a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.run_dir)
                if holder is None:
                    continue  # released between our open and our read
                if not self._stale(holder):
                    raise RunError(f"{self.run_dir} is in use by another sft-hub process: {_describe(holder)}; "
                                   f"wait for it to finish (one writer per run dir)") from None
                log.warning("taking over the stale lock %s: its holder, %s, is no longer running", self.path, _describe(holder))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self._held = True
            return self
        raise RunError(f"{self.run_dir}: could not take the lock {self.path} (another process keeps taking it)")

    def _stale(self, holder: dict) -> bool:
        if not holder:
            raise RunError(f"{self.path}: unreadable lock file; if no sft-hub process uses {self.run_dir}, delete it")
        if holder.get("host") != socket.gethostname():
            raise RunError(f"{self.run_dir} is locked by {_describe(holder)}, another host; if that process is gone, "
                           f"delete {self.path}")
        return holder.get("pid") != os.getpid() and not _alive(int(holder.get("pid", 0)))

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
        for folder in self._created:
            try:
                folder.rmdir()  # only if still empty: a failed start leaves nothing behind
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
