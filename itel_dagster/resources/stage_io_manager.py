"""The IO manager of the stage batches: outputs stay in the run process's memory, each one only
until the steps that read it have finished, and the memory a finished op freed goes back to the
operating system.

Why: a run's peak RSS is what the memory target counts. Dagster's InMemoryIOManager keeps every
step's output until the run ends, so the last steps' peak sat on top of every earlier batch (the
parsed records, the transformed frame, ...). And glibc keeps freed heap pages for reuse, so each
later step's peak also sat on the earlier steps' garbage: `malloc_trim(0)` after each op returns
it. Elsewhere than glibc that part does nothing.
"""

from __future__ import annotations

import ctypes

import dagster as dg


def _load_malloc_trim():
    # The process's own symbols (libc is loaded): ctypes.util.find_library would run
    # `ldconfig -p` at every run's import.
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim")
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


def release_freed_memory() -> bool:
    """Returns freed heap pages to the OS; False where there is no malloc_trim (not glibc)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def _step_context(context: dg.OutputContext):
    """The executing step's context; None for an OutputContext built outside a run."""
    try:
        return context.step_context
    except dg.DagsterInvariantViolationError:
        return None


def _reading_steps(context: dg.OutputContext) -> set[str]:
    """Keys of the run's steps that take this output as an input; none when unknown (no
    execution plan, or a dynamic output): such an output is kept until the run ends."""
    step_context = _step_context(context)
    if step_context is None or context.mapping_key is not None:
        return set()
    readers = set()
    for step in step_context.execution_plan.steps:
        for step_input in step.step_inputs:
            for handle in step_input.get_step_output_handle_dependencies():
                if (handle.step_key, handle.output_name) == (context.step_key, context.name):
                    readers.add(step.key)
    return readers


class StageIOManager(dg.InMemoryIOManager):
    """Outputs never cross processes (the in-process executor). An output is dropped once every
    step that reads it has handed its own output here: a step that failed and is retried still
    finds its input. The last steps' inputs (read by an op whose output goes elsewhere) go when
    the run ends (`stage_io_manager` gives each run its own manager)."""

    def __init__(self):
        super().__init__()
        self._unread_by: dict[tuple, set[str]] = {}  # output -> steps still to finish reading it
        self._outputs_handled: dict[str, int] = {}

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        super().handle_output(context, obj)
        readers = _reading_steps(context)
        if readers:  # an output no step reads (a job's result) is kept
            self._unread_by[tuple(context.get_identifier())] = readers
        if self._step_finished(context):
            self._forget_read_by(context.step_key)
        release_freed_memory()

    def _step_finished(self, context: dg.OutputContext) -> bool:
        """All of the step's outputs are handled: it will not run (or read its inputs) again."""
        step_context = _step_context(context)
        if step_context is None:
            return False
        handled = self._outputs_handled[context.step_key] = (
            self._outputs_handled.get(context.step_key, 0) + 1)
        return handled >= len(step_context.step.step_outputs)

    def _forget_read_by(self, step_key: str) -> None:
        for key, readers in list(self._unread_by.items()):
            readers.discard(step_key)
            if not readers:
                del self._unread_by[key]
                self.values.pop(key, None)

    def clear(self) -> None:
        self.values.clear()
        self._unread_by.clear()
        self._outputs_handled.clear()


@dg.io_manager(description="Stage batches in the run process's memory, each dropped once read.")
def stage_io_manager(_init_context):
    manager = StageIOManager()
    try:
        yield manager
    finally:
        manager.clear()
        release_freed_memory()
