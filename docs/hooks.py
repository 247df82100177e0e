"""MkDocs hook: links from the manual to the repository's own files (the code, configs, benchmarks).

A page links to code as it would on a repository host, relatively (`../src/tether/losses/ppo.py#L40`), so the
Markdown reads right where it lies. MkDocs knows only the files under docs/, so this hook copies every file such a
link names into the site under `_source/` and points the link there; a link to a repository file that does not
exist stops the build, as a broken link between pages does under `--strict`.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

LINK = re.compile(r"(\]\()(\.\./[^)\s#]+)(#[^)\s]*)?(\))")
"""A Markdown link whose target leaves docs/: `](../path#anchor)`."""


def _outside(page_path: Path, target: str, docs: Path, repo: Path) -> Path | None:
    """The repository file a link from `page_path` names, or None when the link stays inside docs/."""
    path = Path(os.path.normpath(page_path.parent / target))  # not resolved: configs/ is a link into src/tether/
    if path.is_relative_to(docs) or not path.is_relative_to(repo):
        return None
    return path


def on_files(files, config):
    docs = Path(os.path.abspath(config["docs_dir"]))
    repo = docs.parent
    wanted = set()
    for page in docs.rglob("*.md"):
        for match in LINK.finditer(page.read_text()):
            path = _outside(page, match.group(2), docs, repo)
            if path is None:
                continue
            if not path.is_file():
                raise PluginError(f"{page.relative_to(repo)}: the link {match.group(2)} names no file of the repository")
            wanted.add(path.relative_to(repo).as_posix())
    for rel in sorted(wanted):
        file = File.generated(config, f"_source/{rel}", abs_src_path=str(repo / rel))
        file.is_documentation_page = lambda: False  # served as it is (a .md file too), not rendered as a page
        files.append(file)
    return files


def on_page_markdown(markdown, page, config, files):
    docs = Path(os.path.abspath(config["docs_dir"]))
    repo = docs.parent
    page_path = Path(page.file.abs_src_path)

    def relink(match):
        path = _outside(page_path, match.group(2), docs, repo)
        if path is None:
            return match.group(0)
        here = posixpath.dirname(page.file.src_uri)
        target = posixpath.relpath(f"_source/{path.relative_to(repo).as_posix()}", here or ".")
        return f"{match.group(1)}{target}{match.group(3) or ''}{match.group(4)}"

    return LINK.sub(relink, markdown)
