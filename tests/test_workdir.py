"""The workdir lock: one run per workdir, dead holders taken over, one holder per distributed job.

Holders other than this test process are written as lock files by hand (another host, a dead
pid, a reused pid); the slow tests use real processes.
"""

import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from archs.training import ConfigError, workdir
from archs.training.workdir import LOCK_NAME, STALE_AFTER_S, WorkdirLock, holder

ROOT = Path(__file__).resolve().parents[1]


def write_lock(path: Path, **fields) -> Path:
    """A lock file as a holder described by `fields` (default: this process) would write it."""
    path.mkdir(parents=True, exist_ok=True)
    record = {
        **workdir._this_process(),
        "since": "2026-12-01T10:00:00+0000",
        "heartbeat": time.time(),
        "token": "someone-else",
        "process_count": 1,
        **fields,
    }
    (path / LOCK_NAME).write_text(json.dumps(record))
    return path / LOCK_NAME


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_refused_with_one_line_naming_the_first(tmp_path):
    with WorkdirLock(tmp_path / "run"):
        before = (tmp_path / "run" / LOCK_NAME).read_bytes()
        with pytest.raises(ConfigError) as refused:
            WorkdirLock(tmp_path / "run").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {os.getpid()} on host {platform.node()} since " in message
        assert (tmp_path / "run" / LOCK_NAME).read_bytes() == before  # the holder sees nothing
        found = holder(tmp_path / "run")
        assert found.alive and found.pid == os.getpid()
    assert holder(tmp_path / "run") is None


def test_release_lets_the_next_one_in(tmp_path):
    first = WorkdirLock(tmp_path)
    first.acquire()
    first.release()
    first.release()  # a second release does nothing
    with WorkdirLock(tmp_path) as second:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == second._token


def test_dead_pid_lock_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    found = holder(tmp_path)
    assert not found.alive and found.reason == f"process {pid} is gone"
    with WorkdirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {pid}" in caplog.text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_reused_pid_lock_taken_over(tmp_path):
    # This process's pid, but a holder that started at another time: the pid was reused.
    write_lock(tmp_path, pid_start=workdir._start_time(os.getpid()) - 1)
    assert "now belongs to another process" in holder(tmp_path).reason
    with WorkdirLock(tmp_path):
        pass


def test_other_host_fresh_lock_refused_stale_lock_taken_over(tmp_path):
    write_lock(tmp_path, host="node-17", pid=4242)
    with pytest.raises(ConfigError, match=r"in use by pid 4242 on host node-17 since 2026-12-01"):
        WorkdirLock(tmp_path).acquire()
    write_lock(tmp_path, host="node-17", pid=4242, heartbeat=time.time() - STALE_AFTER_S - 5)
    assert not holder(tmp_path).alive
    with WorkdirLock(tmp_path):
        assert holder(tmp_path).host == platform.node()


def test_same_host_name_after_a_reboot_is_dead(tmp_path, monkeypatch):
    # A host that booted 10 s ago; the holder's heartbeat, 20 s old, is fresh but from before.
    monkeypatch.setattr(workdir, "_boot_time", lambda: time.time() - 10)
    write_lock(tmp_path, boot_id="an-earlier-boot", heartbeat=time.time() - 20)
    found = holder(tmp_path)
    assert not found.alive and "restarted" in found.reason
    write_lock(tmp_path, boot_id="another-machine-of-that-name", heartbeat=time.time() - 5)
    assert holder(tmp_path).alive  # judged by its heartbeat


def test_unreadable_lock_judged_by_its_age(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text('{"host": "node-1')  # being written, or torn
    with pytest.raises(ConfigError, match="in use by pid 0 on host unknown"):
        WorkdirLock(tmp_path).acquire()
    old = time.time() - STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    with WorkdirLock(tmp_path):
        pass


def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"^workdir '.*run' is a file, not a directory$"):
        WorkdirLock(path).acquire()
    assert holder(path) is None


def test_heartbeat_refreshes_and_notices_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir, "HEARTBEAT_S", 0.02)
    with WorkdirLock(tmp_path) as lock:
        first = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
        deadline = time.time() + 10
        while json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] == first:
            assert time.time() < deadline
            time.sleep(0.01)
        write_lock(tmp_path, host="node-2")  # as if this process had stalled past the timeout
        while not lock.lost:
            assert time.time() < deadline
            time.sleep(0.01)
    assert holder(tmp_path).host == "node-2"  # releasing left the other holder's lock alone


def test_processes_other_than_0_take_process_0s_outcome(tmp_path, monkeypatch):
    said = []

    def broadcast(message):
        said.append(message)
        return "workdir 'x' is in use by pid 1 on host h since t"

    monkeypatch.setattr(workdir, "_broadcast", broadcast)
    with pytest.raises(ConfigError, match="in use by pid 1 on host h"):
        WorkdirLock(tmp_path / "run", process_index=1, process_count=2).acquire()
    assert said == [""] and not (tmp_path / "run").exists()  # process 1 touched nothing

    monkeypatch.setattr(workdir, "_broadcast", lambda message: said.append(message) or message)
    write_lock(tmp_path / "run", host="node-3")
    with pytest.raises(ConfigError, match="node-3"):
        WorkdirLock(tmp_path / "run", process_index=0, process_count=2).acquire()
    assert "node-3" in said[-1]  # process 0 broadcast its refusal before raising


LOCKER = textwrap.dedent(
    """
    import sys, time
    from archs.training import ConfigError
    from archs.training.workdir import WorkdirLock
    try:
        lock = WorkdirLock(sys.argv[1])
        lock.acquire()
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
    """
)


def _locker(path: Path, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(hold_s)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_real_processes_then_a_killed_one(tmp_path):
    first = _locker(tmp_path, 300)
    assert first.stdout.readline() == "locked\n"
    second = _locker(tmp_path, 0)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert f"in use by pid {first.pid} on host {platform.node()}" in err
    assert len(err.strip().splitlines()) == 1
    first.kill()  # SIGKILL: its lock file stays behind
    first.communicate()
    assert (tmp_path / LOCK_NAME).exists() and not holder(tmp_path).alive
    third = _locker(tmp_path, 0)
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0 and out == "locked\n"
    assert f"taking over the lock of pid {first.pid}" in err
    assert holder(tmp_path) is None


DISTRIBUTED_LOCKER = textwrap.dedent(
    """
    import sys
    import jax
    from archs.training import ConfigError
    from archs.training.workdir import WorkdirLock
    port, index, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, index)
    try:
        with WorkdirLock(path, process_index=index, process_count=2):
            print("locked", flush=True)
    except ConfigError as error:
        print(error, flush=True)
    """
)


@pytest.mark.slow
def test_distributed_job_agrees_on_the_outcome(tmp_path):
    def job(path: Path) -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", DISTRIBUTED_LOCKER, str(port), str(i), str(path)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            outs.append(out.strip().splitlines()[-1])  # after gloo's connection line
        return outs

    assert job(tmp_path / "free") == ["locked", "locked"]
    write_lock(tmp_path / "taken", host="node-9", pid=99)
    refused = job(tmp_path / "taken")
    assert refused[0] == refused[1] and "in use by pid 99 on host node-9" in refused[0]
