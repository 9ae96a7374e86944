"""Ctrl-C (SIGINT) and SIGTERM (``kill``, SLURM's time limit): a job records ``interrupted`` and stops; the
process that launched a sweep stops its jobs, waits until each has recorded, and leaves no process behind.

- :func:`interruptible` (around a run, and around every job of a sweep, in whichever process runs it):
  the first SIGINT raises KeyboardInterrupt, the first SIGTERM :class:`Terminated`; further signals are
  ignored until the block ends, so that the interrupted run can write its summary and outcome.
- :func:`stop_jobs_on_signal` (around a sweep, in the launching process): a signal stops the sweep.
  It leaves a ``STOP`` file beside the jobs' outcome records (a job that starts after it does not run),
  sends the signal to the processes of the running jobs (those whose record says ``running``), waits
  until each has recorded how it ended, and then raises here too; :func:`end_descendants` afterwards
  ends whatever the launcher left (pool workers, its resource tracker).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


_state: dict[str, Any] = {"depth": 0, "stopping": False, "deferring": 0, "pending": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: handled like Ctrl-C."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal becomes: Terminated for SIGTERM, KeyboardInterrupt for SIGINT."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended: 143 (SIGTERM), 130 (SIGINT)."""
    return 128 + int(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


@contextmanager
def _handling(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_signal(signum)`` on the first SIGINT / SIGTERM inside the block (outermost block's
    handler wins when nested); later signals are ignored until the outermost block ends. Outside the
    main thread (some launchers) the default actions stay."""
    def handler(signum: int, frame: Any) -> None:
        if _state["stopping"]:
            return
        _state["stopping"] = True
        if _state["deferring"]:
            _state["pending"] = (on_signal, signum)
            return
        on_signal(signum)

    previous: dict[int, Any] = {}
    if _state["depth"] == 0:
        try:
            previous = {s: signal.signal(s, handler) for s in HANDLED}
        except ValueError:  # not the main thread
            yield
            return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["stopping"], _state["pending"] = False, None
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def deferred() -> Iterator[None]:
    """Around a write that must not be cut in two (a checkpoint: torch's archive writer turns an exception
    raised inside it into a RuntimeError and leaves the run "failed"): a signal that arrives inside the
    block takes effect when the block ends, with the same handler it would have had."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    pending = _state["pending"]
    if pending is not None and not _state["deferring"]:
        _state["pending"] = None
        on_signal, signum = pending
        on_signal(signum)


def _raise(signum: int) -> None:
    raise interrupt_for(signum)


def interruptible() -> AbstractContextManager[None]:
    """Inside the block the first SIGINT / SIGTERM raises KeyboardInterrupt / Terminated, once."""
    return _handling(_raise)


def stop_jobs_on_signal(records: Path, running: Callable[[], dict[int, int]], grace_s: float = 30.0) -> AbstractContextManager[None]:
    """Around a sweep: on the first SIGINT / SIGTERM write ``records/STOP``, send the signal to the
    processes of the running jobs (``running()``: pid -> job number) that this process started (a pid
    recorded on another machine names nothing here), wait (at most ``grace_s``) until none of them is
    running, then raise KeyboardInterrupt / Terminated here (a job in this process gets it that way)."""
    def stop(signum: int) -> None:
        records.mkdir(parents=True, exist_ok=True)
        (records / "STOP").touch()
        ours = set(descendants())
        for pid in set(running()) & ours:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in set(running()) & ours):
            time.sleep(0.05)
        raise interrupt_for(signum)

    return _handling(stop)


def stopped(records: Path) -> bool:
    """Whether the sweep whose jobs record in ``records`` has been told to stop."""
    return (records / "STOP").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def descendants(pid: int | None = None) -> list[int]:
    """The processes below ``pid`` (default: this one), children first; empty where /proc is absent."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _exits_with_us() -> set[int]:
    """Helpers that end by themselves when this process ends, and must live until then: loky's resource
    tracker (joblib's process pool), which this process still tells what to clean up as it exits."""
    import sys

    tracker = getattr(sys.modules.get("joblib.externals.loky.backend.resource_tracker"), "_resource_tracker", None)
    pid = getattr(tracker, "_pid", None)
    return {pid} if isinstance(pid, int) else set()


def end_descendants(grace_s: float = 3.0) -> None:
    """End every process this one started (SIGTERM, then SIGKILL after ``grace_s``; the helpers that end
    with this process excepted) and reap its children."""
    spared = _exits_with_us()
    procs = [p for p in descendants() if p not in spared]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in procs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline and any(_alive(p) for p in procs):
            time.sleep(0.05)
        procs = [p for p in procs if _alive(p)]
        if not procs:
            break
    while True:  # reap our own dead children, so that none lingers as a zombie
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
