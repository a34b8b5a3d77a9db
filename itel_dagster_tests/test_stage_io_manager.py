"""StageIOManager: outputs pass between ops in memory, each kept only until the steps that read it
have finished, and freed heap memory goes back to the OS after each op (glibc's malloc_trim)."""

import dagster as dg

from itel_dagster.resources.stage_io_manager import (
    StageIOManager,
    release_freed_memory,
    stage_io_manager,
)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_freed_heap_memory_is_returned_to_the_os():
    blocks = [bytearray(1_000) for _ in range(150_000)]  # ~150 MB of 1 KB heap blocks
    keep_top = bytearray(1_000)  # above them on the heap: freeing them cannot shrink the heap
    del blocks
    before = rss_mb()

    assert release_freed_memory()

    assert before - rss_mb() > 75, (before, rss_mb())
    assert len(keep_top) == 1_000


@dg.op(out=dg.Out(io_manager_key="stage_io"))
def make_rows() -> list[int]:
    return list(range(5))


@dg.op(out=dg.Out(io_manager_key="stage_io"))
def double(rows: list[int]) -> list[int]:
    return [2 * n for n in rows]


@dg.job(resource_defs={"stage_io": StageIOManager()}, executor_def=dg.in_process_executor)
def doubling_job():
    double(make_rows())


def test_outputs_pass_between_ops_in_memory():
    result = doubling_job.execute_in_process()
    assert result.output_for_node("double") == [0, 2, 4, 6, 8]


@dg.op(out=dg.Out(io_manager_key="stage_io"))
def triple(rows: list[int]) -> list[int]:
    return [3 * n for n in rows]


@dg.op(out=dg.Out(io_manager_key="stage_io"))
def total(left: list[int], right: list[int]) -> int:
    return sum(left) + sum(right)


def _stored_steps(manager: StageIOManager) -> set[str]:
    return {key[1] for key in manager.values}  # (run_id, step_key, output_name)


def test_an_output_is_dropped_once_every_step_reading_it_has_finished():
    manager = StageIOManager()

    @dg.job(resource_defs={"stage_io": manager}, executor_def=dg.in_process_executor)
    def fan_out_job():
        rows = make_rows()
        total(double(rows), triple(rows))  # make_rows is read twice, after double ends too

    result = fan_out_job.execute_in_process()

    assert result.success
    assert result.output_for_node("total") == 50
    # Every read output is gone; the job's result, which no step reads, is kept.
    assert _stored_steps(manager) == {"total"}


def test_a_retried_step_still_finds_its_input():
    attempts = []
    manager = StageIOManager()

    @dg.op(out=dg.Out(io_manager_key="stage_io"), retry_policy=dg.RetryPolicy(max_retries=1))
    def flaky_double(context: dg.OpExecutionContext, rows: list[int]) -> list[int]:
        attempts.append(context.retry_number)
        if context.retry_number == 0:
            raise RuntimeError("first attempt fails")
        return [2 * n for n in rows]

    @dg.op(out=dg.Out(io_manager_key="stage_io"))
    def add_up(rows: list[int]) -> int:
        return sum(rows)

    @dg.job(resource_defs={"stage_io": manager}, executor_def=dg.in_process_executor)
    def retried_job():
        add_up(flaky_double(make_rows()))

    result = retried_job.execute_in_process()

    assert result.success
    assert attempts == [0, 1]
    assert result.output_for_node("add_up") == 20
    assert _stored_steps(manager) == {"add_up"}


def test_each_run_gets_its_own_manager_emptied_when_the_run_ends():
    managers = []

    @dg.op(out=dg.Out(io_manager_key="stage_io"), required_resource_keys={"stage_io"})
    def note_manager(context: dg.OpExecutionContext, rows: list[int]) -> list[int]:
        managers.append(context.resources.stage_io)
        return rows

    @dg.job(resource_defs={"stage_io": stage_io_manager}, executor_def=dg.in_process_executor)
    def per_run_job():
        double(note_manager(make_rows()))

    first, second = per_run_job.execute_in_process(), per_run_job.execute_in_process()

    assert first.output_for_node("double") == second.output_for_node("double") == [0, 2, 4, 6, 8]
    assert len(managers) == 2 and managers[0] is not managers[1]
    assert all(isinstance(m, StageIOManager) and m.values == {} for m in managers)
