"""One run per workdir: the lock a training run holds while it writes into its workdir.

Two `train.py` processes on one workdir (a sweep launched again while its first launch still
runs, a requeued job overlapping a lingering one) would both append to metrics.jsonl and both
save checkpoints. `WorkdirLock(workdir).acquire()` is called before anything is written there:
it creates `WORKDIR/lock.json` atomically (O_CREAT | O_EXCL), or refuses with a one-line
`ConfigError` naming the holder. `holder(workdir)` says, without changing anything, who holds
a workdir and whether that process is alive (for reports and sweeps: a locked run is running).

The lock file is one JSON object: `host`, `pid`, `pid_start` (the process start time,
/proc/PID/stat field 22, so that a reused pid is not taken for the holder), `boot_id` and
`pid_namespace` (which processes this host can see), `since` (ISO time of acquisition),
`heartbeat` (Unix time, refreshed every `HEARTBEAT_S` by a daemon thread through an atomic
replace), `token` (this acquisition's id) and `process_count`.

A lock whose holder is gone is taken over with a warning:
- on the holder's own host (same boot and pid namespace) as soon as its pid is gone or belongs
  to a process started at another time (SIGKILL, a crash);
- after a reboot of that host, when its last heartbeat predates this boot;
- from any other host (a shared filesystem) once its heartbeat is older than `STALE_AFTER_S`,
  which assumes the hosts' clocks agree to well within that.
Nothing relies on fcntl/flock, which NFS does not always honour: exclusive creation and rename
are atomic on local filesystems and on NFS v3 and later.

The processes of one `jax.distributed` job are one holder: process 0 takes the lock and
broadcasts the outcome, so every process raises the same error or none does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from archs.training.errors import ConfigError

LOCK_NAME = "lock.json"
# The holder refreshes its heartbeat this often...
HEARTBEAT_S = 15.0
# ...and a holder on another host whose heartbeat is this old is taken for dead: eight missed
# refreshes, room for a stalled filesystem or a busy interpreter, short enough for a requeue.
STALE_AFTER_S = 120.0
# A process removing a stale lock holds LOCK_NAME + ".break" meanwhile (milliseconds); one left
# by a process killed in between is ignored after this long.
BREAK_STALE_S = 30.0
# The outcome process 0 broadcasts: an error message of at most this many UTF-8 bytes.
_MESSAGE_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a workdir's lock, and whether that process is still alive (`reason`: why)."""

    host: str
    pid: int
    since: str
    heartbeat_age_s: float
    alive: bool
    reason: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.since}"


def holder(workdir: str | os.PathLike) -> Holder | None:
    """The holder of `workdir`'s lock (alive or not), or None when nobody holds it."""
    found = _read(Path(workdir) / LOCK_NAME)
    return None if found is None else _judge(found[0])


def _in_use(workdir: str | os.PathLike, current: Holder) -> ConfigError:
    return ConfigError(
        f"workdir {str(workdir)!r} is in use by {current.describe()} ({current.reason}); "
        "wait for that run to end or stop it"
    )


def check_free(workdir: str | os.PathLike) -> None:
    """ConfigError when a live process holds `workdir` (what `acquire` would refuse), without
    changing anything."""
    current = holder(workdir)
    if current is not None and current.alive:
        raise _in_use(workdir, current)


def _this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": platform.node(),
        "pid": pid,
        "pid_start": _start_time(pid),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": _readlink("/proc/self/ns/pid"),
    }


def _start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat field 22); None when unknown
    (no such process, or no /proc)."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces: count from after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _boot_time() -> float | None:
    for line in (_read_text("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read(path: Path) -> tuple[dict[str, Any], bytes] | None:
    """The lock's record and raw bytes; None when there is no lock. A file that is not (yet) a
    whole record, one being created or torn by a crash, gets its modification time as heartbeat."""
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {"host": "unknown"}
    if not isinstance(record.get("pid"), int):
        record["pid"] = 0
    if not isinstance(record.get("heartbeat"), int | float):
        record["heartbeat"] = mtime
    return record, raw


def _judge(record: dict[str, Any]) -> Holder:
    alive, reason = _liveness(record, _this_process(), time.time())
    return Holder(
        host=str(record.get("host")),
        pid=record["pid"],
        since=str(record.get("since", "unknown")),
        heartbeat_age_s=max(time.time() - float(record["heartbeat"]), 0.0),
        alive=alive,
        reason=reason,
    )


def _liveness(record: dict[str, Any], me: dict[str, Any], now: float) -> tuple[bool, str]:
    same_host = record.get("host") == me["host"]
    sees_its_pids = same_host and all(
        record.get(key) == me[key] for key in ("boot_id", "pid_namespace")
    )
    pid = record["pid"]
    if sees_its_pids and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False, f"process {pid} is gone"
        except PermissionError:
            pass  # it exists, under another user
        started = record.get("pid_start")
        if started is not None and _start_time(pid) not in (None, started):
            return False, f"pid {pid} now belongs to another process"
        return True, "process running"
    age = now - float(record["heartbeat"])
    booted = _boot_time()
    if same_host and booted is not None and float(record["heartbeat"]) < booted:
        return False, "its host restarted after its last heartbeat"
    if age > STALE_AFTER_S:
        return False, f"no heartbeat for {age:.0f} s (stale after {STALE_AFTER_S:.0f} s)"
    return True, f"heartbeat {age:.0f} s ago; stale after {STALE_AFTER_S:.0f} s without one"


def _write_atomically(path: Path, record: dict[str, Any], token: str) -> None:
    tmp = path.with_name(f"{path.name}.{token}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


class WorkdirLock:
    """The lock on `workdir` for one run (all `process_count` processes of it).

    `acquire()` (or `with WorkdirLock(...)`) creates the workdir if needed and takes the lock,
    or raises ConfigError; `release()` gives it back. Every process of a multi-process job makes
    the same calls with its own `process_index`: only process 0 touches the lock file.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, process_index: int = 0, process_count: int = 1
    ):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.process_index = process_index
        self.process_count = process_count
        self._token = uuid.uuid4().hex
        self._record: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def lost(self) -> bool:
        """True once the heartbeat found the lock taken over by another process (this process
        had stalled past STALE_AFTER_S): both now write into the workdir."""
        return self._lost

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError (on every process) naming its live holder."""
        message = ""
        if self.process_index == 0:
            try:
                self._acquire()
            except ConfigError as error:
                message = str(error)
            except BaseException:
                self._agree("the process with index 0 failed while locking the workdir")
                raise
        message = self._agree(message)
        if message:
            raise ConfigError(message)

    def _agree(self, message: str) -> str:
        """Process 0's `message` on every process ('' = locked)."""
        if self.process_count == 1:
            return message
        return _broadcast(message)

    def _acquire(self) -> None:
        if self.workdir.exists() and not self.workdir.is_dir():
            raise ConfigError(f"workdir {str(self.workdir)!r} is a file, not a directory")
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create workdir {str(self.workdir)!r}: {error}") from None
        for _ in range(5):
            if self._create():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._beat, name=f"workdir-lock-{self.workdir.name}", daemon=True
                )
                self._thread.start()
                return
            found = _read(self.path)
            if found is None:
                continue  # released in the meantime
            record, raw = found
            current = _judge(record)
            if current.alive:
                raise _in_use(self.workdir, current)
            self._break(raw, current)
        raise ConfigError(
            f"workdir {str(self.workdir)!r}: another process keeps taking its lock; try again"
        )

    def _create(self) -> bool:
        now = time.time()
        record = {
            **_this_process(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
            "heartbeat": now,
            "token": self._token,
            "process_count": self.process_count,
        }
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._record = record
        return True

    def _break(self, raw: bytes, stale: Holder) -> None:
        """Remove the lock whose bytes were `raw`, if it still holds them: one process at a
        time, so that none removes a lock another has just created."""
        guard = self.path.with_name(LOCK_NAME + ".break")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > BREAK_STALE_S:
                    guard.unlink()
            except FileNotFoundError:
                pass
            time.sleep(0.1)
            return  # another process is removing it: look again
        try:
            found = _read(self.path)
            if found is not None and found[1] == raw:
                self.path.unlink()
                logging.warning(
                    "workdir %s: taking over the lock of %s: %s",
                    self.workdir,
                    stale.describe(),
                    stale.reason,
                )
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._refresh()
            except OSError as error:
                logging.warning("workdir %s: lock heartbeat failed: %s", self.workdir, error)

    def _refresh(self) -> None:
        found = _read(self.path)
        if found is None or found[0].get("token") != self._token:
            if not self._lost:
                self._lost = True
                other = "nobody" if found is None else _judge(found[0]).describe()
                logging.error(
                    "workdir %s: this run's lock is now held by %s; two runs may be writing there",
                    self.workdir,
                    other,
                )
            return
        self._record = {**self._record, "heartbeat": time.time()}
        _write_atomically(self.path, self._record, self._token)

    def release(self) -> None:
        """Give the lock back (a no-op when not held, and on processes other than 0)."""
        if self._record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        found = _read(self.path)
        if found is not None and found[0].get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._record = None


def _broadcast(message: str) -> str:
    """Process 0's `message` on every process of the jax.distributed job."""
    from jax.experimental import multihost_utils

    data = message.encode()[:_MESSAGE_BYTES]
    buffer = np.zeros(_MESSAGE_BYTES + 1, np.int32)
    buffer[0] = len(data)
    buffer[1 : 1 + len(data)] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(out[1 : 1 + int(out[0])].astype(np.uint8)).decode(errors="replace")
