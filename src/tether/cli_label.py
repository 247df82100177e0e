"""`tether label`: the preference store's commands (annotators, import, guidelines, export, statistics, a simulated
panel, the web app). They need no torch and no stage, so `tether label ...` runs on this module alone (tether/entry.py)
and starts in a fraction of a second; `tether` (cli.py) adds them as its `label` group."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import typer

from tether import config as C
from tether.cli_base import print_summary as _print_summary
from tether.cli_base import run as _run
from tether.feedback.agreement import stats, stats_tables
from tether.feedback.export import export_preferences
from tether.feedback.importing import import_rows, read_import
from tether.feedback.panel import default_panel, run_panel
from tether.feedback.store import StoreError, open_store

label_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="People label pairs: annotators, import, export, agreement statistics, a simulated panel.",
)
DbOpt = typer.Option(..., "--db", help="Preference store: a SQLite file (created if missing) or a postgresql:// URL.")
ExistingDbOpt = typer.Option(..., "--db", help="Preference store: an existing SQLite file or a postgresql:// URL.")


TokenDaysOpt = typer.Option(90.0, "--token-days", help="Days the token signs in (0: until revoked).")


def _store(db: str, create: bool = True, token_days: float = 90.0):
    """The store at `db`; `create=False` for the commands that only read or label what is there: a mistyped path is then an
    error ("no preference store at ..."), not a new empty store. `token_days`: the lifetime of the tokens it issues."""
    if token_days < 0:
        raise StoreError(f"--token-days must be 0 (tokens that never expire) or more, got {token_days}")
    return open_store(db, create=create, token_lifetime=timedelta(days=token_days) if token_days else None)


@label_app.command("add-annotator")
def label_add_annotator(
    name: str = typer.Argument(..., help="The annotator's name."),
    db: str = DbOpt,
    admin: bool = typer.Option(False, "--admin", help="May open the admin pages."),
    kind: str = typer.Option("human", help="human, judge or simulated."),
    token_days: float = TokenDaysOpt,
):
    """Register an annotator and print their token: it is shown this once (only its SHA-256 is stored)."""

    def go():
        with _store(db, token_days=token_days) as store:
            return store.add_annotator(name, kind, admin=admin)

    token = _run(go)
    print(token)
    typer.echo(f"the token of {name}: give it to them now, it cannot be shown again", err=True)


@label_app.command("rotate")
def label_rotate(name: str = typer.Argument(..., help="The annotator's name."), db: str = ExistingDbOpt, token_days: float = TokenDaysOpt):
    """Give an annotator a new token and print it (shown this once); the old one stops signing in at once."""

    def go():
        with _store(db, create=False, token_days=token_days) as store:
            return store.rotate_token(name)

    token = _run(go)
    print(token)
    typer.echo(f"the new token of {name}: give it to them now, it cannot be shown again; the old one no longer signs in", err=True)


@label_app.command("revoke")
def label_revoke(name: str = typer.Argument(..., help="The annotator's name."), db: str = ExistingDbOpt):
    """Stop an annotator's token signing in (browsers signed in with it too); `tether label rotate` gives them a new one."""

    def go():
        with _store(db, create=False) as store:
            store.revoke_token(name)
            return {"annotator": name, "token": "revoked"}

    _print_summary(_run(go))


@label_app.command("remove")
def label_remove(name: str = typer.Argument(..., help="The annotator's name."), db: str = ExistingDbOpt):
    """Remove an annotator: they cannot sign in or get tasks any more, the tasks they held go to others, and every
    judgement they gave stays (statistics and export keep them)."""

    def go():
        with _store(db, create=False) as store:
            return {"annotator": name, "removed": True, "judgements_kept": store.remove_annotator(name)}

    _print_summary(_run(go))


@label_app.command("import")
def label_import(
    file: str = typer.Argument(..., help="Pairs (prompt, chosen, rejected) or samples (prompt, response), JSONL."),
    db: str = DbOpt,
    annotators_per_task: int = typer.Option(3, help="Distinct annotators each task asks for."),
    golden: bool = typer.Option(False, "--golden", help="The pairs are a golden set: 'chosen' is the known answer."),
):
    """Load candidate pairs, or samples (every two answers to a prompt become a pair), as comparison tasks."""

    def go():
        source = C.resolve_path(file)
        kind, rows, lines = read_import(source, golden)  # a missing, empty or malformed file stops the command before any store is created
        with _store(db) as store:
            return import_rows(store, source, kind, rows, required=annotators_per_task, golden=golden, lines=lines)

    _print_summary(_run(go))


@label_app.command("guidelines")
def label_guidelines(file: Path = typer.Argument(..., help="Text or Markdown file with the annotation guidelines."), db: str = DbOpt):
    """Put a new version of the annotation guidelines in force (every later judgement records it)."""

    def go():
        text = file.read_text()  # a missing file stops the command before any store is created
        with _store(db) as store:
            return {"guidelines_version": store.add_guidelines(text)}

    _print_summary(_run(go))


@label_app.command("export")
def label_export(
    db: str = ExistingDbOpt,
    out: Path = typer.Option(..., "--out", help="Preference pairs JSONL for `tether reward train`."),
    aggregate: str = typer.Option("majority", help="majority (one pair per task) or per_annotator (one per judgement)."),
    ties: str = typer.Option("drop", help="drop, or keep as pairs with meta.tie = true."),
    include_golden: bool = typer.Option(False, "--include-golden", help="Also export golden tasks (majority: their known answer)."),
):
    """Write the judgements as preference pairs (left/right order undone, skips left out)."""

    def go():
        with _store(db, create=False) as store:
            return export_preferences(store, out, aggregate, ties, include_golden)

    _print_summary(_run(go))


@label_app.command("stats")
def label_stats(
    db: str = ExistingDbOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    golden_threshold: float = typer.Option(0.7, help="Flag annotators whose golden-set accuracy is below this."),
):
    """Agreement (per pair, Cohen's kappa, Krippendorff's alpha), throughput, position bias and golden-set accuracy."""

    def go():
        with _store(db, create=False) as store:
            return stats(store, golden_threshold)

    out = _run(go)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        from rich.console import Console

        Console().print(*stats_tables(out))


@label_app.command("simulate")
def label_simulate(
    db: str = ExistingDbOpt,
    agreement: list[float] = typer.Option([0.9, 0.75, 0.6], help="One simulated annotator per value: its agreement with gold."),
    gold_spread: float = typer.Option(0.0, help="0: one shared gold; > 0: each annotator's own gold weights, this spread."),
    limit: int | None = typer.Option(None, help="At most this many judgements per annotator."),
    seed: int = typer.Option(0, help="Seeds the annotators."),
):
    """Label the store's tasks with a panel of simulated annotators (kind 'simulated'), as people would."""

    def go():
        with _store(db, create=False) as store:
            return run_panel(store, default_panel(agreement, gold_spread, seed), limit)

    _print_summary(_run(go))


@label_app.command("serve")
def label_serve(
    db: str = ExistingDbOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (put a TLS proxy in front before leaving loopback)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    golden_rate: float = typer.Option(0.1, help="Share of the pairs handed out that are golden (while any are left)."),
    golden_threshold: float = typer.Option(0.7, help="The statistics flag annotators whose golden-set accuracy is below this."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="A Host name the app answers for besides loopback and --host (the name behind a proxy); repeatable."
    ),
):
    """The annotation web app: annotators sign in with their token and compare pairs in a browser."""
    import uvicorn

    from tether.feedback.webapp import create_app, uvicorn_log_config  # keep-local: the web stack loads only to serve

    store = _run(lambda: open_store(db, golden_rate=golden_rate, create=False))  # add annotators first: a new store has none
    typer.echo(f"tether label: http://{host}:{port}/login (annotators sign in with their token; admins also see /admin/stats)", err=True)
    try:
        # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 only: behind a local TLS proxy (which must pass the
        # Host header on) the cookie is then marked Secure
        uvicorn.run(
            create_app(store, golden_threshold=golden_threshold, allowed_hosts=[host, *allowed_host]),
            host=host,
            port=port,
            log_level="info",
            server_header=False,
            log_config=uvicorn_log_config(),
        )
    finally:
        store.close()


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown")
"""`tether` with only its `label` group (what tether/entry.py runs for `tether label ...`)."""
app.add_typer(label_app, name="label")
