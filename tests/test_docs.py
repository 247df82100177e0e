"""The manual builds as a site with no warning: every page in the nav, every link and anchor found (`make docs`).

Built with MkDocs in --strict mode (mkdocs.yml), as `make docs` builds it, into a temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="MkDocs is not installed (pip install -e '.[docs]')")
pytest.importorskip("material", reason="the Material theme for MkDocs is not installed (pip install -e '.[docs]')")

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(root / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_manual_builds_with_no_warning(tmp_path):
    result = build(REPO, tmp_path / "site")
    assert result.returncode == 0, f"`make docs` fails:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "site" / "concepts" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert (tmp_path / "site" / "_source" / "src" / "tether" / "losses" / "ppo.py").is_file(), "the code a page links to is in the site"


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
    (tmp_path / "src").symlink_to(REPO / "src")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + f"\n{link}\n")
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0 and expect in result.stdout + result.stderr
