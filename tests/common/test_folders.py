"""Records folders: a user's folder is never written into, one writer at a time, a dead
writer's lock is taken over, temporary files are the process's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from common.folders import LOCK, MARKER, FolderError, FolderLock, claim, temporary_name


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_of_the_users_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "summary.md").write_text("my own notes")
    (tmp_path / "model.pt").write_bytes(b"my model")
    before = _snapshot(tmp_path)
    with pytest.raises(FolderError, match="not empty and holds no records of this project"):
        claim(tmp_path, "experiment")
    assert _snapshot(tmp_path) == before  # no marker, no lock, nothing overwritten


def test_a_file_is_refused_as_a_folder(tmp_path):
    path = tmp_path / "results"
    path.write_text("a file")
    with pytest.raises(FolderError, match="is a file, not a folder"):
        claim(path, "experiment")


def test_an_empty_or_new_folder_is_claimed_once_and_then_ours(tmp_path):
    folder = claim(tmp_path / "new", "run-dir")
    assert json.loads((folder / MARKER).read_text()) == {"kind": "run-dir"}
    (folder / "metrics.jsonl").write_text("{}\n")
    assert claim(folder, "run-dir") == folder
    with pytest.raises(FolderError, match="holds records of kind .run-dir., not .experiment."):
        claim(folder, "experiment")


def test_a_run_dir_written_before_the_marker_is_still_ours(tmp_path):
    config = {"algorithm": "maml", "run-dir": str(tmp_path), "seed": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metrics.jsonl").write_text("")
    claim(tmp_path, "run-dir")
    other = tmp_path.parent / (tmp_path.name + "-other")
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    (other / "notes.txt").write_text("the user's")  # not a file a run writes
    with pytest.raises(FolderError):
        claim(other, "run-dir")


def _holder(path):
    return json.loads((path / LOCK).read_text())


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    # The first writer is another live process: a child that sleeps while holding the lock.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from common.folders import FolderLock; "
         "FolderLock(sys.argv[1], 'run-dir').acquire(); print('locked', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(FolderError, match=f"in use by process {child.pid} "):
            FolderLock(tmp_path, "run-dir").acquire()
        assert _holder(tmp_path)["pid"] == child.pid  # the refusal took nothing
    finally:
        child.kill()
        child.wait()
    # Now the first writer is dead (killed, lock left behind): its lock is taken over.
    with FolderLock(tmp_path, "run-dir"):
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()


def test_an_unreaped_dead_writer_and_a_reused_pid_do_not_hold_the_lock(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    try:
        lock = FolderLock(tmp_path, "run-dir")
        (tmp_path / LOCK).write_text(json.dumps(lock.mine | {"pid": child.pid}))
        lock.acquire()
        lock.release()
    finally:
        child.wait()
    # This process's PID, but another start time: a PID the kernel handed out again.
    (tmp_path / LOCK).write_text(json.dumps(lock.mine | {"started": "1"}))
    lock.acquire()
    assert _holder(tmp_path) == lock.mine


def test_a_lock_cut_short_is_taken_over(tmp_path):
    (tmp_path / LOCK).write_text('{"pid": 12')
    with FolderLock(tmp_path, "run-dir"):
        assert _holder(tmp_path)["pid"] == os.getpid()


def test_temporary_files_are_each_processes_own(tmp_path):
    path = tmp_path / "checkpoint.npz"
    names = {temporary_name(path) for _ in range(5)}
    assert len(names) == 5 and all(f".{os.getpid()}." in n.name for n in names)


RACER = """
import sys, time
from common.folders import FolderError, FolderLock
lock = FolderLock(sys.argv[1], "run-dir")
while time.time() < float(sys.argv[2]):
    pass  # start together
try:
    lock.acquire()
except FolderError:
    print("refused", flush=True)
else:
    print("got", flush=True)
    time.sleep(120)  # hold it, alive, until the test has every answer and stops us
"""


def test_of_writers_racing_for_a_dead_writers_lock_exactly_one_wins(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = FolderLock(tmp_path, "run-dir")
    (tmp_path / LOCK).write_text(json.dumps(lock.mine | {"pid": dead.pid}))
    start = f"{time.time() + 5:.3f}"  # after (most) racers have imported
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), start],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(4)
    ]
    try:
        outcomes = sorted(p.stdout.readline().strip() for p in racers)  # type: ignore[union-attr]
    finally:
        for p in racers:
            p.kill()
            p.wait()
    assert outcomes == ["got", "refused", "refused", "refused"]
