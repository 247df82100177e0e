"""`tether push`: a saved model folder, or a run's final model, uploaded to the Hugging Face hub with huggingface_hub.

What a folder given to `push` means:
  - a model folder (config.json: what a stage saved as `<output_dir>/model`): that folder;
  - a stage's run folder (`runs/sft`, `runs/reward`, `runs/ppo`): its `model/`; an online-DPO or rejection-sampling run:
    the final policy its summary.json names (the last round's model);
  - a `tether run` folder: its final policy, `ppo/model` of the last round (its reward model is pushed on its own:
    `tether push runs/demo/reward/model --repo ...`).
A reward-model ensemble is refused: its members are folders of their own, each pushed to its own repository.

The upload is one commit: `HfApi.create_repo` (exist_ok), a branch for `revision` when it is not `main`, and
`HfApi.create_commit` with every file of the folder; the model card's usage lines name the repository in place of the
local folder. The token is huggingface_hub's own (HF_TOKEN, or `hf auth login`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tether.config import did_you_mean
from tether.models.card import MODEL_CARD
from tether.models.loading import ModelError
from tether.models.reward_model import ENSEMBLE_FILE

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
"""A hub repository id, `org/name` (letters, digits, `-`, `_`, `.`)."""


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / ENSEMBLE_FILE).is_file()


def model_to_push(source: str | Path) -> tuple[Path, str]:
    """(the model folder `tether push SOURCE` uploads, a few words on why that one); a ModelError when there is none."""
    source = Path(source).expanduser()
    if not source.is_dir():
        kind = "a file" if source.exists() else f"no such folder{did_you_mean(source)}"
        raise ModelError(f"push {source}: {kind}; expected a saved model folder (config.json + weights) or a run folder")
    if _is_model(source):
        found, why = source, "the model folder given"
    elif _is_model(source / "model"):
        found, why = source / "model", f"the final model of the run {source}"
    else:
        summary = json.loads((source / "summary.json").read_text()) if (source / "summary.json").is_file() else {}
        named = Path(str(summary.get("model", ""))).expanduser()
        rounds = sorted(source.glob("round*/ppo/model"), key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0))
        if summary.get("model") and _is_model(named):
            found, why = named, f"the final policy of the {summary.get('stage', 'run')} run {source} (its summary.json's model)"
        elif rounds or _is_model(source / "ppo" / "model"):
            found = rounds[-1] if rounds else source / "ppo" / "model"
            why = f"the final policy of the tether run {source} (its reward model is pushed on its own)"
        else:
            raise ModelError(
                f"push {source}: no model in this folder: expected a model folder (config.json), a run folder holding "
                "model/, or a `tether run` folder holding ppo/model; has the run finished?"
            )
    if (found / ENSEMBLE_FILE).is_file():
        members = json.loads((found / ENSEMBLE_FILE).read_text()).get("members", [])
        raise ModelError(
            f"push {found}: a reward-model ensemble, whose members are folders of their own "
            f"({', '.join(str((found / m).resolve()) for m in members)}): push each member to its own repository"
        )
    return found, why


def check_repo_id(repo: str) -> None:
    if not REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo or repo.endswith((".", "-")):
        raise ModelError(
            f"--repo {repo!r} is not a Hugging Face repository id: expected org/name (or user/name) of letters, digits, "
            "'-', '_' and '.', without '--' or '..', e.g. --repo my-org/my-sft-model"
        )


def push(source: str | Path, repo: str, private: bool = False, revision: str | None = None, token: str | None = None) -> dict:
    """Upload the model `source` names (`model_to_push`) to the hub repository `repo` in one commit; returns what was
    pushed: {"repo", "folder", "why", "revision", "files", "url"}. A ModelError for a bad repo id, a missing folder or no
    token; the hub's own refusals (HfHubHTTPError) name the repository."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo)
    folder, why = model_to_push(source)
    token = token or get_token()
    if not token:
        raise ModelError("push: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN to a token that can write to " + repo)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    operations = []
    for file in files:
        relative = file.relative_to(folder).as_posix()
        content: str | bytes = str(file)
        if relative == MODEL_CARD:  # the usage lines load the repository, not the local folder
            content = file.read_text().replace(f'"{folder}"', f'"{repo}"').encode()
        operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=content))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo, branch=revision, exist_ok=True)
        api.create_commit(repo, operations, commit_message=f"tether push: {why}", revision=revision)
    except (HfHubHTTPError, ValueError) as e:  # a status the hub answered with; metadata it found invalid
        raise ModelError(f"push to {repo}: the hub refused it: {' '.join(str(e).split())}") from None
    except Exception as e:  # no network, a proxy, DNS (OSError, or the HTTP client's own: httpx or httpx2): one sentence
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
            raise ModelError(f"push to {repo}: could not reach the Hugging Face hub ({type(e).__name__}: {e})") from None
        raise
    return {
        "repo": repo,
        "folder": str(folder),
        "why": why,
        "revision": revision or "main",
        "files": [f.relative_to(folder).as_posix() for f in files],
        "url": str(url),
    }
