"""`tether push` against a stand-in of the Hugging Face hub's HTTP API: huggingface_hub's own HTTP client (httpx from
huggingface_hub 1.0, requests before it) with a stand-in transport, so the real upload code runs (create_repo,
create_branch, preupload, the commit) and nothing leaves the machine."""

from __future__ import annotations

import base64
import importlib
import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import pytest
import requests
from typer.testing import CliRunner

from tether.cli import app
from tether.models.hub import push
from tether.models.loading import ModelError
from tether.models.reward_model import save_ensemble_manifest

runner = CliRunner()


class FakeHub:
    """The hub endpoints `push` calls, answering as huggingface.co does; records every request and the files committed."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.branches: list[str] = []
        self.commits: list[dict] = []  # {"revision", "summary", "files": {path: bytes}}
        self.auth: set[str] = set()

    def __call__(self, method: str, path: str, headers, content: bytes) -> tuple[int, dict]:
        self.requests.append((method, path))
        if path != "/api/agent-harnesses":  # huggingface_hub's own registry lookup, asked without a token
            self.auth.add(headers.get("authorization", ""))
        if (method, path) == ("POST", "/api/repos/create"):
            body = json.loads(content)
            private = body.pop("visibility", None) == "private" if "visibility" in body else body.pop("private", False)
            self.created.append({**body, "private": private})  # 1.x says visibility, 0.x private
            return 200, {"url": f"https://huggingface.co/{body['organization']}/{body['name']}"}
        if method == "POST" and "/branch/" in path:
            self.branches.append(path.rsplit("/branch/", 1)[1])
            return 200, {}
        if method == "GET" and "/revision/" in path:  # huggingface_hub 0.x asks whether the repo stores files with Xet
            return 200, {"id": path.split("/api/models/", 1)[1].split("/revision/")[0], "xetEnabled": False}
        if (method, path) == ("POST", "/api/validate-yaml"):
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and "/preupload/" in path:
            files = json.loads(content)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if method == "POST" and "/commit/" in path:
            lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.commits.append({"revision": path.rsplit("/commit/", 1)[1], "summary": header["summary"], "files": files})
            return 200, {"commitUrl": "https://huggingface.co/x/y/commit/0a1b", "commitOid": "0a1b" * 10}
        return 404, {"error": f"{method} {path}: not in the stand-in"}


class _RequestsStandIn(requests.adapters.BaseAdapter):
    """A requests transport answering from a handler (huggingface_hub before 1.0 talks through requests)."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def send(self, request, **kwargs):
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else b"".join(body)  # commits stream
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, payload = self.handler(request.method, urlparse(request.url).path, headers, body)
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response._content, response.encoding = json.dumps(payload).encode(), "utf-8"
        response.headers["content-type"] = "application/json"
        return response

    def close(self):
        pass


def serve(handler) -> None:
    """Send every request huggingface_hub makes to `handler(method, path, headers, content) -> (status, json)`."""
    utils = huggingface_hub.utils
    if hasattr(utils, "set_client_factory"):  # huggingface_hub >= 1.0: httpx (or its successor) clients
        http = importlib.import_module(type(utils.get_session()).__module__.split(".")[0])

        def answer(request):
            status, payload = handler(request.method, request.url.path, request.headers, request.content)
            return http.Response(status, json=payload)

        utils.set_client_factory(lambda: http.Client(transport=http.MockTransport(answer)))
    else:  # huggingface_hub 0.x: requests sessions

        def session():
            s = requests.Session()
            s.mount("https://", _RequestsStandIn(handler))
            return s

        utils.configure_http_backend(backend_factory=session)


def stop_serving() -> None:
    utils = huggingface_hub.utils
    if hasattr(utils, "set_client_factory"):
        utils.set_client_factory(utils._http.default_client_factory)
    else:
        utils.configure_http_backend()


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    serve(fake)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield fake
    stop_serving()


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir) -> Path:
    """A finished stage's folder: summary.json and model/ (the tiny model, a card naming the folder)."""
    run = tmp_path / "runs" / "sft"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "model" / "README.md").write_text(f'---\nlibrary_name: tether\n---\n\npath = "{run / "model"}"\n')
    (run / "summary.json").write_text(json.dumps({"stage": "sft", "model": str(run / "model")}))
    return run


def test_push_uploads_a_runs_final_model_in_one_commit(hub, run_dir):
    result = runner.invoke(app, ["push", str(run_dir), "--repo", "my-org/tiny-sft", "--private", "--revision", "v1"])
    assert result.exit_code == 0, result.output
    pushed = json.loads(result.stdout)
    assert pushed["folder"] == str(run_dir / "model") and "final model of the run" in pushed["why"] and pushed["revision"] == "v1"
    assert hub.created == [{"name": "tiny-sft", "organization": "my-org", "private": True, "type": "model"}]
    assert hub.branches == ["v1"] and hub.auth == {"Bearer hf_test_token"}
    (commit,) = hub.commits
    local = {p.relative_to(run_dir / "model").as_posix(): p.read_bytes() for p in (run_dir / "model").rglob("*") if p.is_file()}
    assert commit["revision"] == "v1" and set(commit["files"]) == set(local) == set(pushed["files"])
    assert commit["files"]["model.safetensors"] == local["model.safetensors"]  # the weights, byte for byte
    assert commit["files"]["README.md"].decode().endswith('path = "my-org/tiny-sft"\n')  # the card's usage lines load the repo


def test_push_names_what_is_wrong(hub, run_dir, tmp_path, monkeypatch):
    def fails(argv: list[str]) -> str:
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        return " ".join(result.output.split())

    assert "--repo 'not a repo' is not a Hugging Face repository id" in fails(["push", str(run_dir), "--repo", "not a repo"])
    assert "--repo 'org/name/extra' is not" in fails(["push", str(run_dir), "--repo", "org/name/extra"])
    assert f"push {tmp_path / 'runs' / 'sf'}: no such folder (did you mean {run_dir}?)" in fails(
        ["push", str(tmp_path / "runs" / "sf"), "--repo", "a/b"]
    )
    (tmp_path / "empty").mkdir()
    assert "no model in this folder" in fails(["push", str(tmp_path / "empty"), "--repo", "a/b"])
    save_ensemble_manifest(tmp_path / "ens" / "model", ["../member_0/model"])
    assert "a reward-model ensemble" in fails(["push", str(tmp_path / "ens"), "--repo", "a/b"])
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert "no Hugging Face token; log in with `hf auth login` or set HF_TOKEN" in fails(["push", str(run_dir), "--repo", "a/b"])
    assert not hub.commits and not hub.created  # nothing reached the hub


def test_a_refusal_by_the_hub_is_one_sentence(hub, run_dir):
    serve(lambda *request: (403, {"error": "You don't have the rights to create a model under the namespace my-org"}))
    with pytest.raises(ModelError, match=r"push to my-org/tiny: the hub refused it: .*403.*rights to create"):
        push(run_dir, "my-org/tiny")


def test_a_multi_stage_run_pushes_its_final_policy(tmp_path, tiny_model_dir):
    from tether.models.hub import model_to_push

    run = tmp_path / "demo"
    for sub in ("sft/model", "reward/model", "ppo/model", "round2/ppo/model", "round10/ppo/model"):
        shutil.copytree(tiny_model_dir, run / sub)
    folder, why = model_to_push(run)
    assert folder == run / "round10" / "ppo" / "model" and "final policy of the tether run" in why
    online = tmp_path / "online"
    shutil.copytree(tiny_model_dir, online / "round_2" / "model")
    (online / "summary.json").write_text(json.dumps({"stage": "dpo_online", "model": str(online / "round_2" / "model")}))
    assert model_to_push(online)[0] == online / "round_2" / "model"
    with pytest.raises(ModelError, match="is a file|a file"):
        model_to_push(online / "summary.json")
