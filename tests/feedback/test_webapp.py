"""The annotation web app (`tether label serve`) through FastAPI's TestClient: each security
property, the labelling flow down to the store and the exported pairs, the progress text."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient

from tether.data.readers import read_preferences
from tether.feedback.agreement import stats
from tether.feedback.export import export_preferences
from tether.feedback.store import Candidate, StoreError, open_store
from tether.feedback.webapp import COOKIE, LOGIN_COOKIE, MAX_BODY_BYTES, MAX_REASON_CHARS, HideTokens, create_app

XSS = "<script>alert('pwned')</script>"
DIALOGUE = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a river."},
    {"role": "assistant", "content": "The Nile."},
    {"role": "user", "content": "Another one?"},
]


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "prefs.db", seed=3, golden_rate=0.0)
    s.add_candidates("Tell me about rivers.", [Candidate("Rivers flow to the sea."), Candidate("Rivers are wet.")])
    s.add_candidates(DIALOGUE, [Candidate("The Amazon."), Candidate("The Danube, in Europe.")])
    s.add_candidates("Say something.", [Candidate(XSS), Candidate("Something & <b>more</b>.")])
    s.add_guidelines("Prefer <em>correct</em>, finished answers.")
    yield s
    s.close()


@pytest.fixture
def app(store):
    return create_app(store, allowed_hosts=["testserver"])  # TestClient's Host


def sign_in(c: TestClient, token: str, **headers):
    """Sign in as a person does: open the sign-in form, type the token, post the form (with its nonce)."""
    form = c.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    return c.post("/login", data={"token": token, "nonce": nonce.group(1) if nonce else ""}, headers=headers)


def client(app, token: str | None = None) -> TestClient:
    """A browser of its own (own cookie jar), signed in with ``token`` when given."""
    c = TestClient(app, follow_redirects=False)
    if token is not None:
        r = sign_in(c, token)
        assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return c


def shown(page: str) -> dict:
    """What the labelling page shows: task id, form token, left and right responses."""

    def pick(pattern):
        found = re.search(pattern, page, re.S)
        return html.unescape(found.group(1)) if found else None

    return {
        "task_id": int(pick(r'name="task_id" value="(\d+)"')),
        "csrf": pick(r'name="csrf" value="([0-9a-f]+)"'),
        "left": pick(r'id="left">\s*<h2>.*?</h2>\s*<pre class="text">(.*?)</pre>'),
        "right": pick(r'id="right">\s*<h2>.*?</h2>\s*<pre class="text">(.*?)</pre>'),
    }


def answer(c: TestClient, choice: str, reason: str = "", **override):
    """Answer the pair on this browser's page, as its form would."""
    page = shown(c.get("/").text)
    data = {"task_id": page["task_id"], "csrf": page["csrf"], "choice": choice, "reason": reason, **override}
    return page, c.post("/judge", data=data)


# --------------------------------------------------------------------------- auth


def test_without_a_token_pages_go_to_login_and_apis_answer_401(app, store):
    c = client(app)
    for path in ("/", "/admin/stats"):
        r = c.get(path)
        assert (r.status_code, r.headers["location"]) == (303, "/login")
    for path in ("/api/stats", "/api/me"):
        assert c.get(path).status_code == 401
    assert c.post("/judge", data={"task_id": "1", "choice": "left"}).status_code == 401
    assert c.post("/logout").status_code == 303  # harmless without a cookie
    login = c.get("/login")
    assert login.status_code == 200 and 'name="token"' in login.text
    for path in ("/docs", "/redoc", "/openapi.json"):  # FastAPI's own pages would list the API to anyone
        assert c.get(path).status_code == 404
    assert store.votes() == []


def test_a_bad_token_is_refused_everywhere(app, store):
    store.add_annotator("ada")
    c = client(app)
    r = sign_in(c, "not-a-token")
    assert r.status_code == 401 and "That token is not known" in r.text and not c.cookies.get(COOKIE)
    assert c.get("/?token=not-a-token").status_code == 400
    c.cookies.set(COOKIE, "not-a-token")
    assert (c.get("/").status_code, c.get("/").headers["location"]) == (303, "/login")
    assert c.post("/judge", data={"task_id": "1", "choice": "left"}).status_code == 401
    assert c.get("/api/me", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert sign_in(c, "x" * 5000).status_code == 401  # long: refused without a lookup
    assert store.votes() == []


def test_signing_in_sets_an_httponly_strict_cookie(app, store):
    token = store.add_annotator("ada")
    c = TestClient(app, follow_redirects=False)
    r = sign_in(c, token)
    cookie = r.headers["set-cookie"]
    assert r.status_code == 303 and cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "ada" in c.get("/").text

    c2 = client(app, token)
    assert c2.get("/").status_code == 200 and 'id="judge"' in c2.get("/").text
    assert c2.get("/login").headers["location"] == "/"  # already signed in

    r = c2.post("/logout")
    assert r.status_code == 303 and "Max-Age=0" in r.headers["set-cookie"]
    assert c2.get("/").headers["location"] == "/login"


def test_admin_pages_need_an_admin_token(app, store):
    annotator, admin = store.add_annotator("ada"), store.add_annotator("boss", admin=True)
    ada = client(app, annotator)
    assert ada.get("/admin/stats").status_code == 403
    assert ada.get("/api/stats").status_code == 403
    assert ada.get("/api/stats", headers={"Authorization": f"Bearer {annotator}"}).status_code == 403
    answer(ada, "left")

    boss = client(app, admin)
    page = boss.get("/admin/stats")
    assert page.status_code == 200 and "Krippendorff" in page.text and "Cohen's kappa" in page.text and ">ada<" in page.text
    out = TestClient(app).get("/api/stats", headers={"Authorization": f"Bearer {admin}"}).json()  # a script, no cookie
    assert set(out) >= {"tasks", "judgements", "agreement", "kappa", "alpha", "position_bias", "annotators", "golden_threshold"}
    ada_stats = out["annotators"]["ada"]
    assert out["judgements"]["total"] == 1 and ada_stats["position_bias"]["n"] == 1 and ada_stats["throughput"]["judgements"] == 1
    assert set(ada_stats["golden"]) == {"n", "correct", "accuracy", "flagged"}


def test_golden_set_accuracy_flags_an_annotator_on_the_admin_pages(tmp_path):
    from tether.data.records import PreferencePair

    with open_store(tmp_path / "prefs.db", seed=0, golden_rate=1.0) as store:
        store.add_candidates("Tell me about rivers.", [Candidate("Rivers flow to the sea."), Candidate("Rivers are wet.")])
        store.add_pairs([PreferencePair("What is 2 + 2?", "4", "5")], golden=True)  # known answer: "4"
        app = create_app(store, allowed_hosts=["testserver"])
        ada = client(app, store.add_annotator("ada"))
        page = shown(ada.get("/").text)
        assert {page["left"], page["right"]} == {"4", "5"}  # the golden pair comes first at this rate
        answer(ada, "left" if page["left"] == "5" else "right")  # the wrong one
        boss = client(app, store.add_annotator("boss", admin=True))
        golden = boss.get("/api/stats").json()["annotators"]["ada"]["golden"]
        assert golden == {"n": 1, "correct": 0, "accuracy": 0.0, "flagged": True}
        assert "flagged: below 0.7" in boss.get("/admin/stats").text


# --------------------------------------------------------------------------- what the page shows


def test_model_outputs_prompts_and_guidelines_are_shown_as_text(app, store):
    ada = client(app, store.add_annotator("ada"))
    seen = []
    while 'id="judge"' in (text := ada.get("/").text):
        seen.append(text)
        answer(ada, "tie")
    page = next(p for p in seen if "Say something." in p)
    assert XSS not in page and "<b>more</b>" not in page and "<em>correct</em>" not in page
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page and "Something &amp; &lt;b&gt;more&lt;/b&gt;." in page
    assert shown(page)["left"] in (XSS, "Something & <b>more</b>.")  # and it reads back as the very text
    assert len(re.findall(r"<script\b", page)) == 1 and re.search(r'<script nonce="[\w-]+">', page)  # only the page's own
    csp = ada.get("/").headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp


def test_a_dialogue_prompt_shows_every_turn_with_its_role(app, store):
    ada = client(app, store.add_annotator("ada"))
    for _ in range(3):
        page = ada.get("/").text
        if "Name a river." in page:
            break
        answer(ada, "skip")
    turns = re.findall(r'<div class="role">(.*?)</div>\s*<pre class="text">(.*?)</pre>', page)
    assert turns == [
        ("System", "You are terse."),
        ("User", "Name a river."),
        ("Assistant", "The Nile."),
        ("User (answered below)", "Another one?"),
    ]


def test_the_page_does_not_say_which_response_is_a_or_b_in_the_store(app, store):
    ada = client(app, store.add_annotator("ada"))
    form = re.search(r'<form method="post" action="/judge".*?</form>', ada.get("/").text, re.S).group(0)
    assert set(re.findall(r'name="(\w+)"', form)) == {"task_id", "csrf", "reason", "choice"}  # no left_side


# --------------------------------------------------------------------------- limits and CSRF


def test_oversize_bodies_and_reasons_are_refused_with_413(app, store):
    ada = client(app, store.add_annotator("ada"))
    page = shown(ada.get("/").text)
    form = {"task_id": page["task_id"], "csrf": page["csrf"], "choice": "left"}
    r = ada.post("/judge", data={**form, "reason": "x" * (MAX_BODY_BYTES + 1)})
    assert r.status_code == 413 and "larger than 16 KiB" in r.text
    # a body streamed without a Content-Length is counted as it arrives
    chunks = iter([b"choice=left&reason=", b"y" * 10000, b"y" * 10000])
    r = ada.post("/judge", content=chunks, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = ada.post("/judge", data={**form, "reason": "z" * (MAX_REASON_CHARS + 1)})  # within 16 KiB, past the reason cap
    assert r.status_code == 413 and "at most 2000" in r.text
    assert store.votes() == []
    assert ada.post("/judge", data={**form, "reason": "z" * MAX_REASON_CHARS}).status_code == 303
    assert store.votes()[0].reason == "z" * MAX_REASON_CHARS


def test_posts_from_another_origin_or_without_the_form_token_are_refused(app, store):
    token = store.add_annotator("ada")
    ada = client(app, token)
    page = shown(ada.get("/").text)
    form = {"task_id": page["task_id"], "csrf": page["csrf"], "choice": "left"}
    assert ada.post("/judge", data=form, headers={"Origin": "https://evil.example"}).status_code == 403
    assert ada.post("/judge", data=form, headers={"Origin": "null"}).status_code == 403
    assert ada.post("/judge", data={**form, "csrf": "0" * 64}).status_code == 403
    assert ada.post("/judge", data={**form, "csrf": "é" * 64}).status_code == 403
    assert ada.post("/judge", data={k: v for k, v in form.items() if k != "csrf"}).status_code == 403
    assert sign_in(client(app), token, Origin="https://evil.example").status_code == 403
    assert store.votes() == []
    assert ada.post("/judge", data=form, headers={"Origin": "http://testserver"}).status_code == 303
    assert len(store.votes()) == 1


def test_malformed_answers_are_refused_with_400(app, store):
    ada = client(app, store.add_annotator("ada"))
    page = shown(ada.get("/").text)
    form = {"task_id": page["task_id"], "csrf": page["csrf"]}
    assert ada.post("/judge", data={**form, "choice": "A"}).status_code == 400  # store terms are not accepted from the page
    for task_id in ("1 OR 1=1", "²", "9" * 40, ""):
        assert ada.post("/judge", data={**form, "choice": "left", "task_id": task_id}).status_code == 400
    assert store.votes() == []


# --------------------------------------------------------------------------- one annotator, another's tasks and answers


def test_a_task_assigned_to_someone_else_cannot_be_answered(app, store):
    ada, bob = client(app, store.add_annotator("ada")), client(app, store.add_annotator("bob"))
    ada_task = shown(ada.get("/").text)["task_id"]
    bob_page = shown(bob.get("/").text)
    assert bob_page["task_id"] != ada_task  # each task needs one annotator here; ada holds hers
    for task in (ada_task, 999):
        r = bob.post("/judge", data={"task_id": task, "csrf": bob_page["csrf"], "choice": "left"})
        assert r.status_code == 403 and "not the one assigned to you" in r.text
    assert store.votes() == []
    _, r = answer(ada, "left")
    assert r.status_code == 303 and [(v.annotator, v.task_id) for v in store.votes()] == [("ada", ada_task)]


def test_an_answer_cannot_be_changed_or_posted_twice(app, store):
    ada = client(app, store.add_annotator("ada"))
    page, r = answer(ada, "left", "first thought")
    assert r.status_code == 303
    again = {"task_id": page["task_id"], "csrf": page["csrf"]}
    r = ada.post("/judge", data={**again, "choice": "right", "reason": "second thought"})
    assert r.status_code == 409 and "cannot be changed" in r.text
    assert ada.post("/judge", data={**again, "choice": "left", "reason": "first thought"}).status_code == 409  # a resend too
    [vote] = store.votes()
    assert (vote.choice, vote.reason) == (vote.left_side, "first thought")


def test_nobody_reads_another_annotators_answers(app, store):
    ada, bob = client(app, store.add_annotator("ada")), client(app, store.add_annotator("bob"))
    answer(ada, "left", "ada's private reason")
    answer(bob, "tie")
    mine = bob.get("/api/me?annotator=ada").json()  # no endpoint takes a name: the query is ignored
    assert mine["annotator"] == "bob" and [j["choice"] for j in mine["judgements"]] == ["tie"]
    for path in ("/", "/api/me", "/login"):
        assert "ada's private reason" not in bob.get(path).text
    assert bob.get("/api/stats").status_code == 403 and bob.get("/admin/stats").status_code == 403
    ada_mine = ada.get("/api/me").json()
    assert [(j["choice"], j["reason"]) for j in ada_mine["judgements"]] == [("left", "ada's private reason")]


# --------------------------------------------------------------------------- the labelling flow


def test_labelling_records_the_order_and_export_undoes_it(app, store, tmp_path):
    ada = client(app, store.add_annotator("ada"))
    assert re.search(r'id="progress">0 of 3 today<', ada.get("/").text)
    shown_left = {}
    for n, (choice, reason) in enumerate([("left", "on topic"), ("left", ""), ("right", "")], 1):
        page, r = answer(ada, choice, reason)
        assert r.status_code == 303 and r.headers["location"] == "/"
        shown_left[page["task_id"]] = page["left"]
        assert re.search(rf'id="progress">{n} of 3 today<', ada.get("/").text)
    done = ada.get("/").text
    assert 'id="all-done"' in done and "All done" in done and 'id="judge"' not in done

    votes = store.votes()
    assert [v.task_id for v in votes] == list(shown_left)
    left_sides = [v.left_side for v in votes]
    assert set(left_sides) == {"A", "B"}  # the order is drawn per task (both occur with this seed)
    for v, choice in zip(votes, ["left", "left", "right"]):
        assert v.annotator == "ada" and v.kind == "human" and v.guidelines_version == 1
        assert v.choice == (v.left_side if choice == "left" else "AB"[v.left_side == "A"])  # stored as the task's A or B
        assert v.seconds is not None and 0 <= v.seconds < 60  # shown_at of the assignment -> the answer
    assert votes[0].reason == "on topic" and votes[1].reason is None

    summary = export_preferences(store, tmp_path / "prefs.jsonl", aggregate="per_annotator")
    pairs = read_preferences(tmp_path / "prefs.jsonl")
    assert summary["pairs"] == 3
    for pair, choice in zip(pairs, ["left", "left", "right"]):
        task = pair.meta["task_id"]
        left = shown_left[task]
        assert (pair.chosen == left) == (choice == "left"), (task, pair.chosen, left)
        assert pair.meta["annotator"] == "ada"


def test_tie_and_skip_are_recorded_and_progress_counts_them(app, store):
    ada = client(app, store.add_annotator("ada"))
    answer(ada, "tie")
    answer(ada, "skip")
    assert [v.choice for v in store.votes()] == ["tie", "skip"]
    assert 'id="progress">2 of 3 today<' in ada.get("/").text
    me = ada.get("/api/me").json()
    assert (me["done_today"], me["total_today"]) == (2, 3)


def test_the_guidelines_in_force_are_shown_collapsible(app, store):
    ada = client(app, store.add_annotator("ada"))
    page = ada.get("/").text
    assert re.search(r'<details class="card" id="guidelines" open>\s*<summary>Guidelines \(version 1\)</summary>', page)
    answer(ada, "tie")
    assert '<details class="card" id="guidelines">' in ada.get("/").text  # folded once work has started
    store.add_guidelines("Version two.")
    assert "Guidelines (version 2)" in ada.get("/").text and "Version two." in ada.get("/").text


# --------------------------------------------------------------------------- signing in: login CSRF, revoked and expired tokens, hosts


@pytest.mark.parametrize("query", ["token={t}", "%74oken={t}", "TOKEN={t}", "a=1&token={t}", "%2574oken={t}"])
@pytest.mark.parametrize("path", ["/", "/login", "/admin/stats"])
def test_a_token_in_the_address_signs_nobody_in(app, store, path, query):
    """A link from anywhere (``/?token=<the attacker's token>``) would sign the victim in as the attacker: refused."""
    token = store.add_annotator("mallory", admin=True)
    c = TestClient(app, follow_redirects=False)
    r = c.get(f"{path}?{query.format(t=token)}")
    assert r.status_code == 400 and "does not sign in" in r.text and 'name="token"' in r.text
    assert not c.cookies.get(COOKIE) and f"{COOKIE}=" not in r.headers.get("set-cookie", "")
    assert c.get("/").headers["location"] == "/login"  # still signed out


def test_signing_in_needs_the_forms_own_nonce(app, store):
    """A form posted from another site (a login CSRF) has neither the nonce nor its Strict cookie."""
    token = store.add_annotator("mallory")
    c = TestClient(app, follow_redirects=False)
    assert c.post("/login", data={"token": token}).status_code == 403  # no form opened: no nonce
    c.get("/login")
    assert c.cookies.get(LOGIN_COOKIE)
    assert c.post("/login", data={"token": token, "nonce": "guessed"}).status_code == 403
    other = TestClient(app, follow_redirects=False)  # a nonce of another browser's form does not match this one's cookie
    nonce = re.search(r'name="nonce" value="([^"]+)"', other.get("/login").text).group(1)
    assert c.post("/login", data={"token": token, "nonce": nonce}).status_code == 403
    assert not c.cookies.get(COOKIE)
    assert sign_in(c, token).status_code == 303 and c.cookies.get(COOKIE)


def test_the_access_log_hides_a_token_however_it_is_spelled():
    line = '127.0.0.1:5 - "GET /?%74oken=SECRET1&x=2&Token=SECRET2&a%255Ftoken=SECRET3;token=SECRET4 HTTP/1.1" 400'
    hidden = HideTokens.hide(line)
    assert "SECRET" not in hidden and "x=2" in hidden and "%74oken=[hidden]" in hidden


def test_a_revoked_or_rotated_token_signs_in_no_more(app, store):
    token = store.add_annotator("ada")
    ada = client(app, token)
    assert ada.get("/").status_code == 200
    store.revoke_token("ada")
    assert ada.get("/").headers["location"] == "/login"  # the signed-in browser is out too
    assert sign_in(TestClient(app, follow_redirects=False), token).status_code == 401
    new = store.rotate_token("ada")
    assert sign_in(TestClient(app, follow_redirects=False), token).status_code == 401
    assert client(app, new).get("/").status_code == 200
    assert store.rotate_token("ada") != new and store.annotator_for_token(new) is None


def test_a_token_expires_after_the_stores_lifetime(tmp_path):
    from datetime import timedelta

    from sqlalchemy import update

    from tether.feedback.schema import AnnotatorRow, utcnow

    with open_store(tmp_path / "prefs.db", token_lifetime=timedelta(days=2)) as store:
        token = store.add_annotator("ada")
        assert store.annotator_for_token(token) is not None
        with store.engine.begin() as c:  # two days and a second later
            expires = c.scalar(AnnotatorRow.__table__.select().with_only_columns(AnnotatorRow.token_expires_at))
            assert timedelta(days=2) - timedelta(minutes=1) < expires - utcnow() <= timedelta(days=2)
            c.execute(update(AnnotatorRow).values(token_expires_at=utcnow() - timedelta(seconds=1)))
        assert store.annotator_for_token(token) is None
        r = sign_in(TestClient(create_app(store, allowed_hosts=["testserver"]), follow_redirects=False), token)
        assert r.status_code == 401 and "has expired" in r.text
    with open_store(tmp_path / "forever.db", token_lifetime=None) as store:
        token = store.add_annotator("ada")
        assert store.annotator_for_token(token) is not None
    with pytest.raises(StoreError, match="token_lifetime must be positive"):
        open_store(tmp_path / "x.db", token_lifetime=timedelta(0))


def test_a_removed_annotator_keeps_their_judgements(app, store, tmp_path):
    token = store.add_annotator("ada")
    ada = client(app, token)
    answer(ada, "left")
    ada.get("/")  # holds the next task
    assert store.remove_annotator("ada") == 1
    assert ada.get("/").headers["location"] == "/login"
    assert [(v.annotator, v.task_id) for v in store.votes()] == [("ada", store.votes()[0].task_id)]
    assert stats(store)["annotators"]["ada"]["judgements"] == 1
    assert export_preferences(store, tmp_path / "out.jsonl", aggregate="per_annotator")["pairs"] == 1
    bob, got = store.annotator_for_token(store.add_annotator("bob")), []
    while (task := store.next_task_for(bob)) is not None:
        got.append(task.id)
        store.record_judgement(bob, task.id, "A")
    assert len(got) == 2  # the tasks ada did not answer, the one she held included: her hold was released
    with pytest.raises(StoreError, match="already exists"):
        store.add_annotator("ada")
    with pytest.raises(StoreError, match="was removed"):
        store.rotate_token("ada")


def test_only_the_allowed_hosts_are_answered(store):
    token = store.add_annotator("ada")
    app = create_app(store, allowed_hosts=["labels.example.org"])
    for host, status in [
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("[::1]:8000", 200),
        ("LABELS.example.org", 200),
        ("evil.example", 400),
        ("127.0.0.1.evil.example", 400),
        ("", 400),
    ]:
        r = TestClient(app, base_url="http://x").get("/login", headers={"Host": host})
        assert r.status_code == status, (host, r.text)
        if status == 400:
            assert "does not answer for the host" in r.text and "--allowed-host" in r.text
    default = create_app(store)
    assert TestClient(default).get("/login").status_code == 400  # TestClient says Host: testserver
    assert (
        TestClient(default, base_url="http://127.0.0.1:8000").get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )


def test_a_nul_character_in_a_reason_is_refused_with_400(app, store):
    ada = client(app, store.add_annotator("ada"))
    _, r = answer(ada, "left", reason="fine\x00")
    assert r.status_code == 400 and "NUL" in r.text
    assert store.votes() == []
    _, r = answer(ada, "left", reason="fine")
    assert r.status_code == 303
