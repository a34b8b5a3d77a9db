"""StageIOManager: outputs pass between ops in memory, and freed heap memory goes back to the OS
after each op (glibc's malloc_trim)."""

import dagster as dg

from itel_dagster.resources.stage_io_manager import StageIOManager, release_freed_memory


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
