"""The iTel request body of each enriched event, built from the payload mapping in app.itel.yaml
(pure polars expressions; a changed partner contract is a config change, not a code change).

Sources: `event.<column>` (the event's field), `event.task.<key>` (the event's own task object),
`claimx.<path>` (the ClaimX task JSON), `=<text>` (a literal); a list takes the first non-null.
An event's task may come in ClaimX's shape: `event.task.cabinet_id` reads
`task.custom_fields.cabinet_id` first, `event.task.technician_notes` reads `task.notes` first.
"""

from __future__ import annotations

import polars as pl

# The flat names of the event's task -> where a task in ClaimX's shape keeps them.
CLAIMX_TASK_PATHS = {"cabinet_id": "custom_fields.cabinet_id", "technician_notes": "notes"}


def _event_task_expr(path: str) -> pl.Expr:
    paths = [CLAIMX_TASK_PATHS[path], path] if path in CLAIMX_TASK_PATHS else [path]
    found = [pl.col("task_json").str.json_path_match(f"$.{p}") for p in paths]
    return found[0] if len(found) == 1 else pl.coalesce(found)


def _source_expr(source: str) -> pl.Expr:
    if source.startswith("="):
        return pl.lit(source[1:], pl.String)
    if source.startswith("claimx."):
        return pl.col("claimx_task_full").str.json_path_match(f"$.{source[len('claimx.'):]}")
    if source.startswith("event.task."):
        return _event_task_expr(source[len("event.task."):])
    return pl.col(source[len("event."):])


def _field_expr(source: str | list[str]) -> pl.Expr:
    sources = source if isinstance(source, list) else [source]
    exprs = [_source_expr(s) for s in sources]
    if len(exprs) == 1:
        return exprs[0]
    # Mixed types (a column and a JSON text) fall back to text, the first non-null wins.
    return pl.coalesce([e.cast(pl.String) for e in exprs])


def _struct_expr(template: dict) -> pl.Expr:
    fields = [
        (_struct_expr(source) if isinstance(source, dict) else _field_expr(source)).alias(name)
        for name, source in template.items()
    ]
    return pl.struct(fields)


def with_payloads(enriched: pl.DataFrame, template: dict) -> pl.DataFrame:
    """Adds `request_payload`: the JSON body of each row, keys in the template's order."""
    if enriched.is_empty():
        return enriched.with_columns(pl.lit(None, pl.String).alias("request_payload"))
    return enriched.with_columns(
        _struct_expr(template).struct.json_encode().alias("request_payload")
    )
