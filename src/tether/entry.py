"""The `tether` command's entry point: `tether label ...` runs the label commands alone (cli_label.py: no torch, no
stage, so the processes a labelling team starts are quick and light); every other command the whole CLI (cli.py)."""

import importlib
import sys


def main() -> None:
    # keep-local: which CLI module loads depends on the command (the whole one imports torch and every stage)
    module = "tether.cli_label" if sys.argv[1:2] == ["label"] else "tether.cli"
    importlib.import_module(module).app()
