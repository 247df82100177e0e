"""`tether label serve` in a real browser: headless Chromium, driven by Selenium, signs in with a
token, labels pairs by clicking and by keyboard with a typed reason, and the store is checked after.

Needs Debian's `chromium` and `chromium-driver` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``;
`.ci/run` installs them) and the `selenium` package (the `test` extra). Where any is missing the
test is skipped, and the reason is printed in the warnings summary at the end of the run.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tether.feedback.store import Candidate, open_store

XSS = "<script>window.pwned = 1</script> never run me"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """`tether label serve` on a free loopback port over a SQLite store with four tasks and one annotator."""
    db = tmp_path / "prefs.db"
    with open_store(db) as store:
        store.add_candidates("Tell me about rivers.", [Candidate("Rivers flow to the sea."), Candidate("Rivers are wet.")])
        store.add_candidates(
            [
                {"role": "user", "content": "Name a river."},
                {"role": "assistant", "content": "The Nile."},
                {"role": "user", "content": "Another one?"},
            ],
            [Candidate("The Amazon."), Candidate("The Danube.")],
        )
        store.add_candidates("Say something.", [Candidate(XSS), Candidate("Something.")])
        store.add_candidates("Count to three.", [Candidate("1, 2, 3."), Candidate("One, two, three.")])
        store.add_guidelines("Prefer the answer that is correct and finished.")
        token = store.add_annotator("ada")
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "label",
            "serve",
            "--db",
            str(db),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--golden-rate",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/login", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`tether label serve` did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.1)
        yield url, db, token
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def browser(chromium):
    return chromium


def test_label_serve_answers_on_loopback(served, tmp_path):
    """The command itself, with or without a browser: sign-in form, redirect, cookie, the page; no token in its log."""
    url, _, token = served

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(f"{url}/")
    assert (e.value.code, e.value.headers["location"]) == (303, "/login")
    with opener.open(f"{url}/login") as form:  # the sign-in form: its nonce, in the page and in a Strict cookie
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.read().decode()).group(1)
        login_cookie = form.headers["set-cookie"].split(";")[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"{url}/login", data=f"token={token}&nonce={nonce}".encode(), headers={"Cookie": login_cookie}))
    assert e.value.code == 303 and "HttpOnly" in e.value.headers["set-cookie"]
    cookie = e.value.headers["set-cookie"].split(";")[0]
    with opener.open(urllib.request.Request(f"{url}/", headers={"Cookie": cookie})) as page:
        assert page.status == 200 and b'id="progress">0 of 4 today<' in page.read()
    for query in (f"token={token}", f"%74oken={token}"):  # a token in the address signs nobody in, and is not logged
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(f"{url}/?{query}")
        assert e.value.code == 400 and "tether_token=" not in (e.value.headers["set-cookie"] or "")
    with pytest.raises(urllib.error.HTTPError) as e:  # a Host the app does not answer for (DNS rebinding)
        opener.open(urllib.request.Request(f"{url}/login", headers={"Host": "evil.example"}))
    assert e.value.code == 400
    log = (tmp_path / "server.log").read_text()
    assert '"GET /?token=[hidden] HTTP/1.1" 400' in log and '"GET /?%74oken=[hidden] HTTP/1.1" 400' in log and token not in log


def test_sign_in_and_label_by_click_and_keyboard_in_chromium(browser, served, tmp_path):  # browser first: skip before serving
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, db, token = served
    # each answer reloads the page: an element found on the old page may be gone by the time it is read
    wait = WebDriverWait(browser, 15, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))

    def text(css: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, css).text

    def on_screen() -> dict:
        return {
            "task_id": int(browser.find_element(By.NAME, "task_id").get_attribute("value")),
            "left": text("#left pre"),
            "right": text("#right pre"),
        }

    def wait_for_progress(done: int) -> None:
        wait.until(lambda d: text("#progress") == f"{done} of 4 today")

    def press(keys: str) -> None:  # to the page itself, as a person pressing a key with nothing focused
        ActionChains(browser).send_keys(keys).perform()

    # 1. no cookie yet: the app sends the browser to the sign-in form; sign in with the token
    browser.get(f"{url}/")
    assert browser.current_url == f"{url}/login"
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait_for_progress(0)
    assert "Prefer the answer that is correct and finished." in text("#guidelines")

    # 2. first pair by clicking: a reason typed in the box, then the left answer's button
    answers = []
    first = on_screen()
    browser.find_element(By.ID, "reason").send_keys("on topic and finished")
    browser.find_element(By.ID, "choose-left").click()
    answers.append((first, "left", "on topic and finished"))
    wait_for_progress(1)

    # 3. second pair (a dialogue: every turn shown with its role) by keyboard: 2 = right
    second = on_screen()
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#prompt .role")] == ["USER", "ASSISTANT", "USER (ANSWERED BELOW)"]
    press("2")
    answers.append((second, "right", None))
    wait_for_progress(2)

    # 4. third pair: the model output holding <script> is shown as text and never runs; keys typed into
    #    the reason box are text, not shortcuts; Esc leaves the box, then 1 = left
    third = on_screen()
    assert XSS in (third["left"], third["right"])
    assert browser.execute_script("return window.pwned === undefined") is True
    reason = browser.find_element(By.ID, "reason")
    reason.send_keys("1 2 3 space: typed, not pressed")
    reason.send_keys(Keys.ESCAPE)
    assert text("#progress") == "2 of 4 today"  # nothing was submitted while typing
    press("1")
    answers.append((third, "left", "1 2 3 space: typed, not pressed"))
    wait_for_progress(3)

    # 5. fourth pair: space = skip; then nothing is left
    fourth = on_screen()
    press(Keys.SPACE)
    answers.append((fourth, "skip", None))
    wait_for_progress(4)
    assert "All done" in text("#all-done")
    browser.save_screenshot(str(tmp_path / "all_done.png"))

    # 6. the store holds exactly those four judgements, as the task's A or B, with the order shown
    with open_store(db) as store:
        tasks = {t.id: t for t in store.tasks()}
        votes = store.votes()
    assert [v.task_id for v in votes] == [page["task_id"] for page, _, _ in answers]
    for vote, (page, choice, why) in zip(votes, answers):
        task = tasks[vote.task_id]
        left_side = "A" if page["left"] == task.response_a.strip() else "B"
        assert {page["left"], page["right"]} == {task.response_a, task.response_b}
        expected = {"left": left_side, "right": "AB"[left_side == "A"], "skip": "skip"}[choice]
        assert (vote.annotator, vote.choice, vote.left_side, vote.reason) == ("ada", expected, left_side, why)
        assert vote.seconds is not None and vote.seconds >= 0
