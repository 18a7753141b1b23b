"""Worker processes for long cases that may crash: a crash (a segfault, the out-of-memory
killer) fails only the case its worker held, and Ctrl-C or SIGTERM ends the workers at
once. Python's ProcessPoolExecutor does neither: one dead worker breaks the pool and fails
every queued case, and on an interrupt it runs the queue first.

Workers are spawned (no fork after library threads started) and kept for many tasks (a
worker's imports, ITK's, take seconds). `fn` and the tasks must be picklable, and a script
that starts workers needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

from hntseg.errors import one_line


class WorkerDied(Exception):
    """A worker process ended without returning its task's result."""


class Outcome(NamedTuple):
    """A task's end: its index in the task list, and the value `fn` returned or the error
    it raised (a WorkerDied when its process died)."""

    index: int
    value: Any = None
    error: BaseException | None = None


def describe_exit(code: int | None) -> str:
    """A dead worker's exit code in words: the signal that killed it, or the code."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ", e.g. by the out-of-memory killer" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _serve(conn: Connection, fn: Callable[[Any], Any], init: Callable[[], None] | None) -> None:
    """A worker's loop: run each task it is sent, send back (value, error); None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it ends us
    if init is not None:
        init()
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        try:
            out: tuple[Any, BaseException | None] = (fn(task), None)
        except Exception as exc:
            out = (None, exc)
        try:
            conn.send(out)
        except Exception as exc:  # a value or error that does not pickle
            conn.send((None, RuntimeError(f"{type(exc).__name__}: {one_line(exc)}")))


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any], init: Callable[[], None] | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn, init), daemon=True)
        self.proc.start()
        child.close()

    def died(self) -> WorkerDied:
        self.proc.join(10)
        return WorkerDied(f"worker died ({describe_exit(self.proc.exitcode)})")

    def end(self, now: bool) -> None:
        """Ask the worker to leave (now: SIGTERM, then SIGKILL if it lingers) and reap it."""
        with contextlib.suppress(Exception):
            if now:
                self.proc.terminate()
            else:
                self.conn.send(None)
        self.proc.join(10 if now else 60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()


class Pool:
    """At most `workers` processes running `fn` on tasks, each fresh worker first running
    `init`. Use it as a context manager: leaving it on an exception ends the workers now."""

    def __init__(self, workers: int, init: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers {workers}: must be at least 1")
        self.workers = workers
        self.init = init
        self._all: list[_Worker] = []

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        for worker in self._all:
            worker.end(now=exc_type is not None)
        self._all.clear()

    def imap_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Outcome]:
        """Each task's Outcome as it ends. A worker that dies fails its own task only; a
        fresh worker takes the next one."""
        ctx = multiprocessing.get_context("spawn")
        queue = deque(enumerate(tasks))
        idle: list[_Worker] = []
        busy: dict[_Worker, int] = {}
        while queue or busy:
            while queue and len(busy) < self.workers:
                worker = idle.pop() if idle else self._start(ctx, fn)
                index, task = queue[0]
                try:
                    worker.conn.send(task)
                except (BrokenPipeError, EOFError, OSError):  # it died between tasks
                    self._drop(worker)
                    continue
                queue.popleft()
                busy[worker] = index
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for worker in [w for w in busy if w.conn in ready or w.proc.sentinel in ready]:
                index = busy.pop(worker)
                try:
                    value, error = worker.conn.recv()
                except Exception:  # EOF or half a message: the process died on this task
                    error, value = worker.died(), None
                    self._drop(worker)
                else:
                    idle.append(worker)
                yield Outcome(index, value, error)

    def _start(self, ctx: Any, fn: Callable[[Any], Any]) -> _Worker:
        worker = _Worker(ctx, fn, self.init)
        self._all.append(worker)
        return worker

    def _drop(self, worker: _Worker) -> None:
        self._all.remove(worker)
        worker.end(now=True)
