"""`python -m itel_dagster.cli` is the `itel-dagster` command."""

from itel_dagster.cli import main

main()
