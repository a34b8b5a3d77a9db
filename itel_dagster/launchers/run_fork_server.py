"""The warm process behind WarmForkRunLauncher: it imports the heavy, thread-free libraries once
(dagster, confluent_kafka, httpx, ...) and then forks one child per run, which executes the run as
`dagster api execute_run` would. A run then starts in about a second instead of paying a fresh
interpreter and every import (5-7 s on 2 cores, measured by `itel-dagster bench`).

Spare: with --spare-import, one child is always forked ahead and imports those modules (polars,
pyarrow, deltalake: the ones that start threads, so the server itself cannot) while no run needs
it. The next run goes to it, over a pipe, and a new spare is forked. The project's own code is
never imported ahead: a code change still reaches the next run. A spare that died is replaced,
and that run is forked directly.

Protocol, one JSON object per line: the launcher writes {"execute_run_args": <serialized
ExecuteRunArgs>} to stdin; the server reserves a run process (the spare, or a fresh fork) and
answers {"pid": <child pid>, "spare": <bool>} or {"error": "..."} on stdout. The process waits
until the launcher has tagged the run with it and writes {"go": true} (answered {"started":
true}, or {"started": false, "error": ...} when it died meanwhile) or {"go": false} (it exits
without running): no process ever runs a run whose tag does not name it.
The first line it writes is {"ready": true, "threads": n} once the preloads are imported, or
{"ready": false, "error": "..."} when forking would be unsafe. It exits when stdin closes.

Fork safety: a process may only fork while it has one thread (locks held by other threads are
copied locked into the child). The server therefore refuses to start when a preloaded module
started threads (polars and pyarrow do: their allocators' background threads), and the child
imports those itself, with the project's own code, fresh for every run: code and config changes
reach the next run without restarting anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import signal
import sys
import traceback


def os_threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1


class Spare:
    """A forked child that imported the spare modules and waits on a pipe for its run."""

    def __init__(self, pid: int, pipe: int):
        self.pid = pid
        self.pipe = pipe  # write end; closing it without a run makes the spare exit
        self.exited = False

    def hand_over(self, execute_run_args: str) -> bool:
        """Gives the spare its run; False when it is gone (the caller forks the run itself)."""
        if self.exited:
            return False
        data = execute_run_args.encode()
        try:
            while data:
                data = data[os.write(self.pipe, data):]
        except OSError:  # BrokenPipeError: it died
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1


def _spare_child(read_end: int, spare_imports: list[str]) -> None:
    """In the forked spare: import ahead, wait for a run, run it; never return."""
    try:
        _detach_from_server()
        for module in spare_imports:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - the run imports it again and reports it
                traceback.print_exc()
        chunks = []
        while chunk := os.read(read_end, 1 << 20):
            chunks.append(chunk)
        os.close(read_end)
    except BaseException:  # noqa: BLE001 - the spare must end here, whatever happened
        traceback.print_exc()
        os._exit(1)
    if not chunks:
        os._exit(0)  # discarded: the server went away
    _run_child(b"".join(chunks).decode())


def _fork_spare(spare_imports: list[str]) -> Spare:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        # Another waiting process's pipe must not stay open here, or it never sees its end.
        reserved = _state["reserved"]
        for other in (_state["spare"], reserved[0] if reserved else None):
            if other is not None:
                other.close()
        _spare_child(read_end, spare_imports)
    os.close(read_end)
    return Spare(pid, write_end)


_state: dict = {"spare": None, "spare_imports": [], "reserved": None}


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        spare = _state["spare"]
        if spare is not None and spare.pid == pid:
            spare.exited = True


def _detach_from_server() -> None:
    """In a forked child: give back the server's stdin and stdout (the launcher's pipes)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stdout is the reply pipe: the run's prints go to the server's stderr
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)


def _run_child(execute_run_args: str) -> None:
    """In the forked child: become an ordinary run worker and never return."""
    code = 1
    try:
        _detach_from_server()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from dagster._cli.api import execute_run_command
        from dagster._utils.interrupts import setup_interrupt_handlers

        setup_interrupt_handlers()  # as `dagster api execute_run` does: SIGTERM cancels too
        run = getattr(execute_run_command, "callback", execute_run_command)  # under its click
        try:
            run(input_json=execute_run_args, compressed_input_json=None)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(preload: list[str], spare_imports: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of `dagster dev` reaches the runs
    for module in preload:
        importlib.import_module(module)
    threads = os_threads()
    if threads != 1:
        _reply({"ready": False, "threads": threads, "error":
                f"after importing {preload} this process has {threads} threads; forking it is "
                "unsafe. Preload only modules that start no threads (not polars or pyarrow)"})
        return 2
    _reply({"ready": True, "threads": threads, "pid": os.getpid()})
    _state["spare_imports"] = list(spare_imports or [])
    if _state["spare_imports"]:
        _state["spare"] = _fork_spare(_state["spare_imports"])
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        _reap()
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            if _state["spare"] is not None:
                _state["spare"].close()  # it exits
            return 0  # the launcher went away
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _handle(line)


def _handle(line: bytes) -> None:
    reserved = _state["reserved"]
    _state["reserved"] = None
    try:
        request = json.loads(line)
        if reserved is not None:  # the launcher's word on the process it reserved
            process, execute_run_args = reserved
            if not request.get("go"):
                process.close()  # it exits without running anything
                _reply({"started": False})
            elif process.hand_over(execute_run_args):
                _reply({"started": True})
            else:
                _reply({"started": False, "error": f"run process {process.pid} died before its run"})
            return
        execute_run_args = request["execute_run_args"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if reserved is not None:
            reserved[0].close()
        _reply({"error": f"bad request: {exc!r}"})
        return
    process, from_spare = _reserve()
    _state["reserved"] = (process, execute_run_args)
    _reply({"pid": process.pid, "spare": from_spare})
    if _state["spare_imports"]:
        _state["spare"] = _fork_spare(_state["spare_imports"])


def _reserve() -> tuple[Spare, bool]:
    """(a process waiting for its run, whether it is the spare that imported ahead); without a
    live spare, a fresh fork that imports nothing ahead."""
    _reap()  # learn whether the spare died
    spare = _state["spare"]
    _state["spare"] = None
    if spare is not None:
        if not spare.exited:
            return spare, True
        spare.close()
    return _fork_spare([]), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preload", action="append", default=[],
                        help="module imported once, before any fork (repeatable)")
    parser.add_argument("--spare-import", action="append", default=[],
                        help="module a spare child imports ahead of its run (repeatable)")
    args = parser.parse_args(argv)
    return serve(args.preload, args.spare_import)


if __name__ == "__main__":
    sys.exit(main())
