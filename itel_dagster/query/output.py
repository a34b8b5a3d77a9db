"""A query's result as text: an aligned table for a terminal, CSV, or JSON (a list of objects)."""

from __future__ import annotations

import polars as pl

FORMATS = ("table", "csv", "json")
TABLE_MAX_ROWS = 1000  # a terminal table shows the first and last rows past this; csv/json all


def render(frame: pl.DataFrame, fmt: str = "table") -> str:
    if fmt == "csv":
        return frame.write_csv()
    if fmt == "json":
        return frame.write_json() + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    with pl.Config(tbl_rows=TABLE_MAX_ROWS, tbl_cols=-1, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, tbl_width_chars=10_000, fmt_str_lengths=60,
                   tbl_formatting="ASCII_MARKDOWN"):
        table = str(frame)
    rows = "1 row" if frame.height == 1 else f"{frame.height} rows"
    return f"{table}\n({rows})\n"
