"""What every `tether` command shares: one red sentence for a user's mistake, one line for Ctrl-C, the summary as JSON.

Light on purpose (no torch, no stage): the `tether label` commands (cli_label.py) run on it alone, so the processes a
labelling team starts (the web app, `label stats`, `label export`) start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape

from tether.config import ConfigError
from tether.data.readers import DataError
from tether.feedback.store import StoreError

console = Console(stderr=True, quiet=int(os.environ.get("RANK", "0")) > 0)
"""Messages for the user, on standard error (standard output holds the command's result)."""

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, StoreError)
"""Errors that mean a mistake in what the user gave (a setting, a file, a row, a store)."""

PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
"""OS errors that a path the user gave causes (a missing file, a file where a folder belongs, no permission)."""


def say(markup: str) -> None:
    console.print(markup, soft_wrap=True, highlight=False)


def say_error(message: str) -> None:
    say(f"[bold red]error:[/bold red] {escape(message)}")


def run(fn: Callable, *args, resumable: bool = False, errors: tuple[type[BaseException], ...] = ()):
    """Call a command's work; a user error (USER_ERRORS, `errors`, PATH_ERRORS) becomes one red sentence and exit code 2,
    Ctrl-C one line and exit code 130 (as a shell reports SIGINT), not a traceback. `resumable`: a rerun of the same
    command resumes (a training stage, a run)."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        say("interrupted; rerun the same command to resume" if resumable else "interrupted")
        raise typer.Exit(130) from None
    except USER_ERRORS + errors as e:
        say_error(str(e))
        raise typer.Exit(2) from None
    except PATH_ERRORS as e:
        where = f": {e.filename}" if e.filename else ""
        say_error(f"{e.strerror or e}{where}" + (f" -> {e.filename2}" if e.filename2 else ""))
        raise typer.Exit(2) from None


def print_summary(summary: dict | None) -> None:
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:  # one process speaks for all
        print(json.dumps(summary, indent=2))
