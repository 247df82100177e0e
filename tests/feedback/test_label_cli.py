"""`tether label ...` through the real CLI, and `tether collect` writing into the store."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tether.cli import app
from tether.data.readers import read_preferences
from tether.data.records import PreferencePair
from tether.feedback.store import open_store

runner = CliRunner()


def tether(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    result = tether(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_commands_end_to_end(tmp_path):
    db = tmp_path / "prefs.db"
    samples = write_rows(
        tmp_path / "samples.jsonl",
        [
            {"prompt": f"Tell me about {topic}.", "response": f"{topic.title()} {detail}.", "model": "tiny"}
            for topic in ("rivers", "forests", "bread", "winter")
            for detail in ("are old", "matter a lot", "vary", "are in many stories")
        ],
    )
    report = json.loads(ok("label", "import", samples, "--db", db, "--annotators-per-task", 2).stdout)
    assert report == {"kind": "samples", "rows": 16, "prompts": 4, "tasks": 24, "golden": False}  # 4 prompts x C(4, 2)
    golden = write_rows(
        tmp_path / "golden.jsonl", [{"prompt": "Tell me about rivers.", "chosen": "Rivers flow to the sea.", "rejected": "no"}]
    )
    assert json.loads(ok("label", "import", golden, "--db", db, "--golden").stdout)["tasks"] == 1
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("Prefer the answer that is on topic and finished.")
    assert json.loads(ok("label", "guidelines", guidelines, "--db", db).stdout) == {"guidelines_version": 1}

    result = ok("label", "add-annotator", "ada", "--db", db, "--admin")
    token = result.stdout.strip()
    with open_store(db) as store:
        ada = store.annotator_for_token(token)
        assert (ada.name, ada.is_admin) == ("ada", True)

    panel = json.loads(ok("label", "simulate", "--db", db, "--agreement", 0.9, "--agreement", 0.7, "--seed", 1).stdout)
    # each answers all 24 regular tasks, and the golden one if it was mixed in (at the default rate, 0.1)
    assert set(panel) == {"simulated-1", "simulated-2"} and all(24 <= r["judgements"] <= 25 for r in panel.values())

    out = json.loads(ok("label", "stats", "--db", db, "--json").stdout)
    assert out["judgements"]["total"] == sum(r["judgements"] for r in panel.values()) and len(out["kappa"]) == 1
    assert out["tasks"] == {"total": 25, "golden": 1, "complete": 24}
    table = ok("label", "stats", "--db", db).stdout
    assert "Krippendorff's alpha" in table and "simulated-2" in table

    summary = json.loads(ok("label", "export", "--db", db, "--out", tmp_path / "prefs.jsonl", "--ties", "keep").stdout)
    pairs = read_preferences(tmp_path / "prefs.jsonl")
    assert summary["pairs"] == len(pairs) == 24 and summary["ties"] == sum(bool(p.meta.get("tie")) for p in pairs)
    each = json.loads(
        ok("label", "export", "--db", db, "--out", tmp_path / "each.jsonl", "--aggregate", "per_annotator", "--ties", "keep").stdout
    )
    assert each["pairs"] == 48


def test_user_errors_are_one_red_sentence(tmp_path):
    db = tmp_path / "prefs.db"
    ok("label", "add-annotator", "ada", "--db", db)
    for args, said in [
        (["label", "add-annotator", "ada", "--db", db], "an annotator named 'ada' already exists"),
        (["label", "export", "--db", db, "--out", tmp_path / "p.jsonl", "--ties", "half"], "ties must be 'drop' or 'keep'"),
        (["label", "stats", "--db", f"postgresql://nobody@/x?host={tmp_path}"], "cannot open the preference store"),
        (["label", "import", tmp_path / "missing.jsonl", "--db", db], "missing.jsonl"),
        (
            ["label", "import", write_rows(tmp_path / "s.jsonl", [{"prompt": "Q?", "response": "a"}]), "--db", db, "--golden"],
            "golden tasks need preference pairs",
        ),
    ]:
        result = tether(*args)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and said in result.output and "Traceback" not in result.output


def test_collect_writes_prompts_responses_and_tasks_to_the_store(tiny_model_dir, tiny_data, tmp_path):
    db = tmp_path / "prefs.db"
    result = ok(
        "collect",
        f"model={tiny_model_dir}",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={tmp_path / 'collect'}",
        "limit=3",
        "responses_per_prompt=3",
        "generation.max_new_tokens=6",
        "precision=fp32",
        f"db={db}",
        "annotators_per_task=2",
    )
    summary = json.loads(result.stdout)
    jsonl = read_preferences(tmp_path / "collect" / "preferences.jsonl")
    assert summary["db_tasks"] == summary["pairs"] == len(jsonl)  # the JSONL output is as before
    with open_store(db) as store:
        tasks = store.tasks()
        assert len(tasks) == len(jsonl) and {t.required for t in tasks} == {2}
        assert {(t.prompt, frozenset((t.response_a, t.response_b))) for t in tasks} == {
            (p.prompt, frozenset((p.chosen, p.rejected))) for p in jsonl
        }
        from sqlalchemy import select

        from tether.feedback.schema import ResponseRow

        with store.engine.connect() as c:
            models_settings = c.execute(select(ResponseRow.model, ResponseRow.settings)).all()
    assert {m for m, _ in models_settings} == {str(tiny_model_dir)}
    assert all(s["max_new_tokens"] == 6 and s["temperature"] == 1.0 and s["seed"] == 0 for _, s in models_settings)


def test_collect_can_store_the_simulated_annotators_judgements(tiny_model_dir, tiny_data, tmp_path):
    db = tmp_path / "prefs.db"
    summary = json.loads(
        ok(
            "collect",
            f"model={tiny_model_dir}",
            f"prompts={tiny_data['prompts']}",
            f"output_dir={tmp_path / 'collect'}",
            "limit=3",
            "responses_per_prompt=3",
            "generation.max_new_tokens=6",
            "precision=fp32",
            f"db={db}",
            "store_judgements=true",
        ).stdout
    )
    jsonl = read_preferences(tmp_path / "collect" / "preferences.jsonl")
    assert summary["db_judgements"] == summary["db_tasks"] == len(jsonl) > 0
    chosen = {(p.prompt, frozenset((p.chosen, p.rejected))): p.chosen for p in jsonl}
    with open_store(db) as store:
        tasks = {t.id: t for t in store.tasks()}
        votes = store.votes()
    assert len(votes) == len(tasks) and {v.kind for v in votes} == {"simulated"}
    for v in votes:  # each stored answer picks the response the JSONL pair has as chosen
        t = tasks[v.task_id]
        assert (t.response_a if v.choice == "A" else t.response_b) == chosen[(t.prompt, frozenset((t.response_a, t.response_b)))]
        assert 0 < v.strength < 1


def test_collect_with_an_unreachable_store_stops_before_sampling(tiny_model_dir, tiny_data, tmp_path):
    result = tether(
        "collect",
        f"model={tiny_model_dir}",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={tmp_path / 'c'}",
        f"db=postgresql://nobody@/x?host={tmp_path}",
    )
    assert result.exit_code == 2 and "cannot open the preference store" in result.output
    assert not (tmp_path / "c" / "samples.jsonl").exists()


def test_pairs_to_label_keeps_each_pair_of_texts_of_a_prompt_once():
    from tether.stages.collect import pairs_to_label

    prompts = ["Say hi.", "Say bye.", "Say hi."]  # the third is the first again
    responses = [
        "yes",
        "no",
        "no ",  # "no" twice: (yes, no) once, (no, no) is nothing to prefer
        "a",
        "",
        "b",  # an empty answer pairs with nothing
        "no",
        "yes",
        "maybe",
    ]  # (no, yes) is prompt 0's pair the other way round
    assert pairs_to_label(prompts, responses, 3) == [(0, 0, 1), (1, 0, 2), (2, 0, 2), (2, 1, 2)]


def test_collect_stores_one_answer_a_task_when_samples_repeat(tiny_model_dir, tmp_path, monkeypatch):
    # two samples of a prompt with the same text make two pairs of one task: the simulated annotator answered both (with
    # different choices) and the store refused the second, which stopped `make demo`. A task already in the store the
    # other way round gets the answer as its own A or B.
    from tether.stages import collect as collect_stage

    texts = {"Say hi.": ["Hello there.", "Hi!", "Hi!", "Go away."], "Say bye.": ["Bye.", "See you.", "Later.", "Farewell."]}
    monkeypatch.setattr(
        collect_stage,
        "sample_responses",
        lambda model, tok, prompts, *a, **k: [
            {"response": texts[p][n % 4], "finished": True, "n_tokens": 3} for n, p in enumerate(prompts)
        ],
    )
    prompts = tmp_path / "prompts.jsonl"
    write_rows(prompts, [{"prompt": "Say hi."}, {"prompt": "Say bye."}])
    db = tmp_path / "prefs.db"
    with open_store(db) as store:  # an earlier run stored (Go away., Hello there.): the pair reversed
        store.add_pairs([PreferencePair(prompt="Say hi.", chosen="Go away.", rejected="Hello there.")])
    s = json.loads(
        ok(
            "collect",
            f"model={tiny_model_dir}",
            f"prompts={prompts}",
            f"output_dir={tmp_path / 'c'}",
            "responses_per_prompt=4",
            "precision=fp32",
            f"db={db}",
            "store_judgements=true",
        ).stdout
    )
    assert s["pairs"] == 3 + 6 and s["db_tasks"] == 9 and s["db_judgements"] == 9 and s["db_judgements_kept"] == 0
    jsonl = read_preferences(tmp_path / "c" / "preferences.jsonl")
    chosen = {frozenset((p.chosen, p.rejected)): p.chosen for p in jsonl}
    assert len(chosen) == 9
    with open_store(db) as store:
        tasks = {t.id: t for t in store.tasks()}
        votes = store.votes()
    assert len(tasks) == 9 and len(votes) == 9
    reversed_task = next(t for t in tasks.values() if t.response_a == "Go away.")
    for v in votes:  # each stored answer picks the response the JSONL pair has as chosen, whichever way round the task is
        t = tasks[v.task_id]
        assert (t.response_a if v.choice == "A" else t.response_b) == chosen[frozenset((t.response_a, t.response_b))]
    assert any(v.task_id == reversed_task.id for v in votes)
    with open_store(db) as store:
        assert store.first_responses([reversed_task.id]) == {reversed_task.id: "Go away."}
        assert store.first_responses(tasks) == {t.id: t.response_a for t in tasks.values()}
    # the same run again answers the same way: nothing changes, nothing fails
    again = json.loads(
        ok(
            "collect",
            f"model={tiny_model_dir}",
            f"prompts={prompts}",
            f"output_dir={tmp_path / 'c2'}",
            "responses_per_prompt=4",
            "precision=fp32",
            f"db={db}",
            "store_judgements=true",
        ).stdout
    )
    assert again["db_judgements"] == 9 and again["db_judgements_kept"] == 0


def test_commands_that_only_read_the_store_refuse_a_missing_one(tmp_path):
    """A mistyped --db is an error, not a new empty store reporting 0 pairs; the commands that fill a store still create it."""
    typo = tmp_path / "typo" / "prefs.db"
    for argv in (["stats"], ["stats", "--json"], ["export", "--out", tmp_path / "pairs.jsonl"], ["simulate"], ["serve"]):
        result = tether("label", *argv, "--db", typo)
        assert result.exit_code == 2, (argv, result.output)
        assert f"no preference store at {typo}" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "typo").exists() and not (tmp_path / "pairs.jsonl").exists()
    ok("label", "add-annotator", "ada", "--db", typo)
    assert typo.exists()
    assert json.loads(ok("label", "stats", "--db", typo, "--json").stdout)["tasks"]["total"] == 0


def test_guidelines_or_import_from_a_missing_file_create_no_store(tmp_path):
    for command, said in (("guidelines", "No such file or directory: {}"), ("import", "{}: no such file")):
        result = tether("label", command, tmp_path / "nope.md", "--db", tmp_path / "prefs.db")
        assert result.exit_code == 2 and said.format(tmp_path / "nope.md") in " ".join(result.output.split())
        assert "Traceback" not in result.output and not (tmp_path / "prefs.db").exists()


# --------------------------------------------------------------------------- annotators' tokens; import files no store keeps


def test_rotate_revoke_and_remove_an_annotator(tmp_path):
    db = tmp_path / "prefs.db"
    write_rows(tmp_path / "pairs.jsonl", [{"prompt": f"Q{i}?", "chosen": f"yes {i}.", "rejected": f"no {i}."} for i in range(3)])
    ok("label", "import", tmp_path / "pairs.jsonl", "--db", db, "--annotators-per-task", 1)
    first = ok("label", "add-annotator", "ada", "--db", db, "--token-days", 30).stdout.strip()
    with open_store(db) as store:
        ada = store.annotator_for_token(first)
        store.record_judgement(ada, store.next_task_for(ada).id, "A")
    second = ok("label", "rotate", "ada", "--db", db).stdout.strip()
    with open_store(db) as store:
        assert store.annotator_for_token(first) is None and store.annotator_for_token(second).name == "ada"
    assert json.loads(ok("label", "revoke", "ada", "--db", db).stdout) == {"annotator": "ada", "token": "revoked"}
    with open_store(db) as store:
        assert store.annotator_for_token(second) is None
    third = ok("label", "rotate", "ada", "--db", db, "--token-days", 0).stdout.strip()  # 0: never expires
    assert json.loads(ok("label", "remove", "ada", "--db", db).stdout) == {"annotator": "ada", "removed": True, "judgements_kept": 1}
    with open_store(db) as store:
        assert store.annotator_for_token(third) is None and [v.annotator for v in store.votes()] == ["ada"]
    stats = json.loads(ok("label", "stats", "--db", db, "--json").stdout)
    assert stats["annotators"]["ada"]["judgements"] == 1
    for args, said in [
        (("rotate", "nobody"), "there is no annotator named 'nobody'"),
        (("rotate", "ada"), "was removed"),
        (("add-annotator", "ada"), "already exists"),
        (("add-annotator", "bob", "--token-days", -1), "--token-days must be 0"),
    ]:
        result = tether("label", *args, "--db", db)
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output, result.output


def test_import_names_the_line_of_text_no_store_keeps(db_url, tmp_path):
    """NUL characters, lone surrogates and 100,000-deep nesting: one line naming file:line, on both backends, nothing stored."""
    good = '{"prompt": "Q?", "chosen": "yes.", "rejected": "no."}\n'
    cases = {
        "nul.jsonl": (good + '{"prompt": "Q2?", "chosen": "a\\u0000b", "rejected": "no."}\n', ":2: a text holds a NUL character"),
        "nul-key.jsonl": (good + '\n{"prompt": "Q2?", "chosen": "a", "rejected": "b", "m\\u0000": 1}\n', ":3: a text holds a NUL"),
        "surrogate.jsonl": ('{"prompt": "\\ud800?", "chosen": "yes.", "rejected": "no."}\n', ":1: a text holds a lone surrogate"),
        "deep.jsonl": (good + '{"prompt": "Q?", "chosen": ' + "[" * 100_000 + "]" * 100_000 + "}\n", ":2: the JSON is nested more than"),
        "deep.json": ("[" + "[" * 100_000 + "]" * 100_000 + "]", "deep.json: the JSON is nested more than"),
    }
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text)
        result = tether("label", "import", tmp_path / name, "--db", db_url)
        assert result.exit_code == 2 and said in result.output, (name, result.output)
        assert len(result.output.strip().splitlines()) <= 3 and "Traceback" not in result.output, result.output
    with open_store(db_url) as store:
        assert store.tasks() == []
        ada = store.get_or_add_annotator("judge", "judge")
        store.add_pairs([PreferencePair("Q?", "yes.", "no.")])
        for reason in ("a\x00b", "\ud800"):
            try:
                store.record_judgement(ada, store.tasks()[0].id, "A", reason=reason)
            except ValueError as e:
                assert "NUL" in str(e) or "surrogate" in str(e)
            else:
                raise AssertionError(f"{reason!r} was stored")
        assert store.votes() == []


def test_a_reversed_golden_pair_that_contradicts_stops_the_import(db_url, tmp_path):
    rows = [
        {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"},
        {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."},
        {"prompt": "2 + 2?", "chosen": "5", "rejected": "4"},  # line 3 reverses line 1: the known answers contradict
    ]
    result = tether("label", "import", write_rows(tmp_path / "golden.jsonl", rows), "--db", db_url, "--golden")
    assert result.exit_code == 2, result.output
    assert "golden.jsonl:3: this pair is the pair of line 1 in the opposite order" in " ".join(result.output.split())
    with open_store(db_url) as store:
        assert store.tasks() == []  # one transaction: nothing half imported

    # repeated the same way round, or reversed as a tie both times: one task, and the summary says so
    rows[2] = {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}
    report = json.loads(ok("label", "import", write_rows(tmp_path / "golden.jsonl", rows), "--db", db_url, "--golden").stdout)
    assert (report["tasks"], report["duplicates"]) == (2, 1)
    # a later file that reverses a stored golden pair is refused too, naming the stored task
    later = write_rows(tmp_path / "later.jsonl", [{"prompt": "Sky?", "chosen": "Green.", "rejected": "Blue."}])
    result = tether("label", "import", later, "--db", db_url, "--golden")
    assert result.exit_code == 2 and "already in the store" in " ".join(result.output.split()), result.output
    # as regular tasks (no known answer) a reversed pair is the same comparison: merged, and counted
    report = json.loads(ok("label", "import", later, "--db", db_url).stdout)
    assert (report["tasks"], report["duplicates"]) == (1, 0)
