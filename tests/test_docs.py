"""The manual: it builds as a site with no warning (every page in the nav, every link and anchor found), and its
configuration reference is the one the config classes generate.

The site is built with MkDocs in --strict mode (mkdocs.yml), as `make docs` builds it, into a temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tether import config as C

REPO = Path(__file__).resolve().parents[1]

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="MkDocs or its Material theme is not installed (pip install -e '.[docs]')",
)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", REPO / "tools" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_is_current():
    gen = _generator()
    assert gen.OUT == REPO / "docs" / "reference" / "config.md"
    assert gen.OUT.read_text() == gen.render(), (
        "docs/reference/config.md is out of date with the config classes: run `python tools/gen_config_reference.py` "
        "(with src on PYTHONPATH, or tether installed) and commit the result"
    )


def test_the_config_reference_has_every_command_and_key():
    gen = _generator()
    assert set(C.STAGES.values()) <= {cls for _, _, cls in gen.COMMANDS}, "a command's config is missing from COMMANDS"
    text = gen.render()
    for _, _, cls in gen.COMMANDS:
        rows = C.describe(cls)
        # a stage's whole config inside another's (`tether run`'s sft:, ...) points at that stage's table instead
        stage_sections = tuple(r.key + "." for r in rows if r.type == "section" and gen._field_type(cls, r.key) in gen.STAGE_OF)
        for row in rows:
            if not row.key.startswith(stage_sections):
                assert f"| `{row.key}` |" in text, f"{cls.__name__}.{row.key} is missing from the reference"
    assert "| `optim.lr` | float | `0.0001` |" in text  # PPOConfig's own default (1e-4), not OptimSettings' (2e-5)


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(root / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )


@needs_mkdocs
def test_the_manual_builds_with_no_warning(tmp_path):
    result = build(REPO, tmp_path / "site")
    assert result.returncode == 0, f"`make docs` fails:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "site" / "concepts" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert (tmp_path / "site" / "_source" / "src" / "tether" / "losses" / "ppo.py").is_file(), "the code a page links to is in the site"


@needs_mkdocs
@pytest.mark.parametrize(
    "link,expect",
    [
        ("[gone](no-such-page.md)", "no-such-page.md"),
        ("[gone](concepts.md#no-such-section)", "no-such-section"),
        ("[gone](../src/tether/losses/no_such_loss.py)", "no_such_loss.py"),
    ],
)
def test_a_broken_link_fails_the_build(tmp_path, link, expect):
    """The check above can fail: a copy of the manual with one broken link (a page, an anchor, a code file) does not build."""
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    for entry in REPO.iterdir():  # the rest of the repository, which pages link to
        if entry.name not in ("docs", "mkdocs.yml", "site") and not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + f"\n{link}\n")
    result = build(tmp_path, tmp_path / "site")
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode != 0 and len(problems) == 1 and expect in problems[0], problems


def test_the_readme_links_resolve():
    """The README is not part of the site, so its links into the manual are checked here."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 20
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
