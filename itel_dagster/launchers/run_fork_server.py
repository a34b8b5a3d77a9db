"""The warm process behind WarmForkRunLauncher: it imports the heavy, thread-free libraries once
(dagster, confluent_kafka, httpx, ...) and then forks one child per run, which executes the run as
`dagster api execute_run` would. A run then starts in about a second instead of paying a fresh
interpreter and every import (5-7 s on 2 cores, measured by `itel-dagster bench`).

Protocol, one JSON object per line: the launcher writes {"execute_run_args": <serialized
ExecuteRunArgs>} to stdin; the server answers {"pid": <child pid>} or {"error": "..."} on stdout.
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


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_child(execute_run_args: str) -> None:
    """In the forked child: become an ordinary run worker and never return."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # stdout is the reply pipe: the run's prints go to the server's stderr
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
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


def serve(preload: list[str]) -> int:
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
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        _reap()
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return 0  # the launcher went away
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _handle(line)


def _handle(line: bytes) -> None:
    try:
        execute_run_args = json.loads(line)["execute_run_args"]
    except (ValueError, KeyError, TypeError) as exc:
        _reply({"error": f"bad request: {exc!r}"})
        return
    pid = os.fork()
    if pid == 0:
        _run_child(execute_run_args)
    _reply({"pid": pid})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preload", action="append", default=[],
                        help="module imported once, before any fork (repeatable)")
    args = parser.parse_args(argv)
    return serve(args.preload)


if __name__ == "__main__":
    sys.exit(main())
