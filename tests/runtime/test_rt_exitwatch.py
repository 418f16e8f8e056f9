"""ExitWatch: a container's exit record and a monitor's death, seen without blocking the moment they happen."""
from __future__ import annotations

import os
import select
import shutil
import signal
import time

from runtime import state
from runtime.exitwatch import ExitWatch


def _start(mon, cid, bundle_dir):
    mon.client.create(cid, bundle_dir)
    mon.client.start(cid)


def _readable(watch: ExitWatch, timeout: float = 10) -> bool:
    return bool(select.select([watch.fileno()], [], [], timeout)[0])


def test_an_exit_record_is_seen_once_and_before_any_answer_about_it(mon, bundle):
    watch = ExitWatch()
    try:
        assert watch.monitor(mon.state_dir)
        _start(mon, "c", bundle(["sleep", "1000"]))
        assert watch.container(mon.state_dir, "c") is None  # running: no record
        assert watch.ended() == ([], [])
        mon.client.kill("c", "KILL")
        code = mon.client.wait("c", timeout=10)["exit_code"]
        # the monitor answered the wait after it wrote the record: the event is queued already, no waiting
        assert watch.ended() == ([(mon.state_dir, "c")], [])
        assert watch.ended() == ([], [])
        assert watch.container(mon.state_dir, "c")["exit_code"] == code == 137  # watched again: the record
        watch.forget_container(mon.state_dir, "c")
        mon.client.delete("c")
        watch.forget_container(mon.state_dir, "c")  # twice, and after the dir went: nothing to do
    finally:
        watch.close()


def test_a_dead_monitor_is_reported_once_and_not_watched_again(mon, bundle):
    watch = ExitWatch()
    try:
        assert watch.monitor(mon.state_dir)
        assert watch.monitor(mon.state_dir)  # idempotent
        _start(mon, "c", bundle(["sleep", "1000"]))
        assert watch.container(mon.state_dir, "c") is None
        pid = mon.client.state("c")["pid"]
        os.kill(mon.pid, signal.SIGKILL)
        assert _readable(watch)
        assert watch.ended() == ([], [mon.state_dir])
        assert watch.ended() == ([], [])
        assert not watch.monitor(mon.state_dir)  # monitor.json names a dead process
        os.kill(pid, signal.SIGKILL)  # the container outlived its monitor
    finally:
        watch.close()


def test_a_deleted_state_dir_and_a_missing_one_are_no_error(tmp_path):
    watch = ExitWatch()
    try:
        assert not watch.monitor(str(tmp_path))  # no monitor.json
        state.write_json(str(tmp_path / "monitor.json"), {"pid": 2 ** 22 + 1, "start_time": 1})
        assert not watch.monitor(str(tmp_path))  # no such process
        (tmp_path / "c").mkdir()
        assert watch.container(str(tmp_path), "c") is None
        shutil.rmtree(tmp_path / "c")
        assert _readable(watch)
        assert watch.ended() == ([(str(tmp_path), "c")], [])  # gone while watched: ended, with no record
        (tmp_path / "c").mkdir()
        state.write_json(str(tmp_path / "c" / "exit.json"), {"exit_code": 0})
        assert watch.ended() == ([], [])  # the kernel dropped the watch with the dir
        assert watch.container(str(tmp_path), "c") == {"exit_code": 0}
        assert watch.container(str(tmp_path), "gone") == {}  # no state dir: ended, with no record
    finally:
        watch.close()


def test_where_the_kernel_refuses_a_watch_the_end_is_polled(mon, bundle, monkeypatch):
    """inotify's per-user watch limit reached (ENOSPC), no fd left for a pidfd (EMFILE): the container's exit
    file and the monitor are looked at on every ended() instead, with a warning; nothing is missed."""
    import errno

    from runtime.host import linux

    def refuse(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_fd(_pid):
        raise OSError(errno.EMFILE, "Too many open files")

    warnings = []
    watch = ExitWatch(warn=lambda event, **fields: warnings.append(event))
    try:
        monkeypatch.setattr(linux, "inotify_add_watch", refuse)
        monkeypatch.setattr(os, "pidfd_open", no_fd)
        assert watch.monitor(mon.state_dir)
        _start(mon, "c", bundle(["sleep", "1000"]))
        assert watch.container(mon.state_dir, "c") is None
        assert len(warnings) == 2
        assert watch.ended() == ([], [])
        mon.client.kill("c", "KILL")
        mon.client.wait("c", timeout=10)
        assert watch.ended() == ([(mon.state_dir, "c")], [])
        assert watch.ended() == ([], [])
        mon.client.delete("c")
        os.kill(mon.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (ended := watch.ended())[1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ended == ([], [mon.state_dir])
    finally:
        watch.close()
