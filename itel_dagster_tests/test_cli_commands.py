"""The `itel-dagster` group imports a subcommand's module only when that subcommand runs."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from itel_dagster.cli import SUBCOMMANDS, main
from itel_dagster.settings.paths import PROJECT_ROOT


def test_every_subcommand_resolves_to_its_click_command_and_help_lists_them_all():
    context = click.Context(main)
    for name in SUBCOMMANDS:
        command = main.get_command(context, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    listed = CliRunner().invoke(main, ["--help"]).output
    assert all(f"  {name} " in listed for name in SUBCOMMANDS)
    assert main.get_command(context, "no-such-command") is None


@pytest.mark.slow  # a fresh interpreter, to see what the command imports
def test_the_local_stack_commands_do_not_import_dagster_or_polars():
    probe = ("import sys\n"
             "from itel_dagster.cli import main\n"
             "import click\n"
             "context = click.Context(main)\n"
             "for name in ('kafka', 'simulators', 'publish'):\n"
             "    main.get_command(context, name)\n"
             "print(sorted(m for m in ('dagster', 'polars', 'deltalake') if m in sys.modules))\n")
    finished = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[]"
