"""Issue 15 item 4: an exclusive lock on the run folder.

Two runs into one folder: the second stops at once with one line naming the holder. A run
killed with ``kill -9`` leaves its record and no lock (the kernel releases ``flock``): the
next run takes the folder over and says whose it was. A lock still held by processes a dead
run left behind is reported as such.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from fctc.cli.errors import RunError
from fctc.cli.lock import LOCK_FILE, RunLock

from cli_helpers import TINY, deep_update, run_cli, write_config


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert lock.stale_holder is None
        with pytest.raises(RunError, match=rf"in use by another fctc train \(pid {os.getpid()} on"):
            RunLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released: no holder recorded
    with RunLock(tmp_path / "run") as again:
        assert again.stale_holder is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_holder_is_detected_by_its_pid(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "started": "then"}
    (folder / LOCK_FILE).write_text(json.dumps(dead))
    with RunLock(folder) as lock:  # its record stayed, its lock went with it
        assert lock.stale_holder == dead
    # A record of a dead pid whose lock is still held (a worker it forked lives on).
    (folder / LOCK_FILE).write_text(json.dumps(dead))
    fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(RunError, match=f"pid {dead['pid']} .* no longer running but left"):
            RunLock(folder, wait=0.3).acquire()
    finally:
        os.close(fd)


def test_second_run_is_refused_and_kill_9_leaves_a_resumable_folder(tmp_path):
    config = deep_update(TINY, {"training": {"max_steps": 100_000, "eval_every": 100_000,
                                             "checkpoint_every": 1}})
    path = write_config(tmp_path / "long.yaml", config)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fctc", "train", "--config", str(path),
                             "--out", str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # a busy 2-core machine starts slowly
        while not (out / "last" / "train_state.safetensors").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first run never saved a checkpoint"
            time.sleep(0.1)
        for argv in (["--config", str(path), "--out", str(out)], ["--resume", str(out)]):
            rc, _, err = run_cli("train", *argv, "--no-progress")
            assert rc == 2
            line = err.splitlines()[-1]
            assert line.startswith(f"fctc train: error: run folder {out} is in use by another "
                                   f"fctc train (pid {proc.pid} on {socket.gethostname()}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 100_000
    rc, _, err = run_cli("train", "--resume", str(out), "--max-steps", "3", "--no-progress")
    assert rc == 0, err
    assert f"was held by pid {proc.pid}" in err and "no longer running" in err
