"""hntseg.workers: a crash fails only its own task; an interrupt ends the workers at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from hntseg.workers import Pool, WorkerDied, describe_exit


def work(task):
    """A worker's task (module level: spawned workers import it by name)."""
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    if task == "raise":
        raise ValueError("bad task")
    if task == "lambda":
        return lambda: None  # does not pickle
    if task == "sleep":
        time.sleep(120)
    return (task, os.getpid())


def test_a_dead_worker_fails_its_own_task_only():
    """ProcessPoolExecutor fails every queued task when one worker dies; here the others
    run on (a fresh worker takes over), and errors and unpicklable values come back as
    errors of their own task."""
    tasks = [1, "die", 2, "raise", 3, "lambda", 4, 5]
    with Pool(2) as pool:
        outcomes = sorted(pool.imap_unordered(work, tasks))
    assert [o.index for o in outcomes] == list(range(len(tasks)))
    values = {tasks[o.index]: o.value[0] for o in outcomes if o.error is None}
    assert values == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    errors = {tasks[o.index]: o.error for o in outcomes if o.error is not None}
    assert isinstance(errors["die"], WorkerDied) and "SIGKILL" in str(errors["die"])
    assert isinstance(errors["raise"], ValueError) and str(errors["raise"]) == "bad task"
    assert isinstance(errors["lambda"], RuntimeError)
    pids = {o.value[1] for o in outcomes if o.error is None}
    assert len(pids) <= 3  # workers are kept for many tasks (2, and 1 in the dead one's place)
    assert multiprocessing.active_children() == []


def test_an_interrupt_ends_busy_workers_at_once():
    """Leaving the pool on an exception (Ctrl-C) ends a worker in a long task now."""
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), Pool(2) as pool:
        for outcome in pool.imap_unordered(work, ["sleep", 1, "sleep"]):
            assert outcome.error is None
            raise KeyboardInterrupt  # as the first result comes in
    assert time.perf_counter() - start < 30  # the sleeps are 120 s
    assert multiprocessing.active_children() == []


def test_exit_codes_in_words():
    assert describe_exit(-9) == "killed by SIGKILL, e.g. by the out-of-memory killer"
    assert describe_exit(-11) == "killed by SIGSEGV"
    assert describe_exit(3) == "exit code 3"
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
