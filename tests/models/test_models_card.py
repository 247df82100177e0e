"""Hub ids from the local Hugging Face cache, model cards, and saved folders that load with plain transformers."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tether.cli import app
from tether.config import DPOConfig, RewardConfig, SFTConfig, load_config
from tether.fingerprint import content_id
from tether.models.card import MODEL_CARD, read_card_metadata
from tether.models.loading import ModelError, resolve_model
from tether.models.reward_model import RewardModel, encode_texts, load_reward_model, normalized_reward
from tether.stages.dpo import train_dpo
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_hub_cache(home: Path, repo_id: str, model_dir: Path, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """`model_dir` laid out as huggingface_hub caches a download of `repo_id` under HF_HOME=`home`:
    hub/models--org--name/{blobs/, snapshots/<revision>/<file> -> ../../blobs/<file>, refs/main = <revision>}."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(p for p in model_dir.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def hub_home(tmp_path, monkeypatch, tiny_model_dir):
    """HF_HOME holding the tiny model as the hub model `tiny-org/tiny-llama`; no network: a connection attempt is
    refused and recorded, and the test fails if there was one (even one that a library caught)."""
    home = tmp_path / "hf-home"
    fake_hub_cache(home, "tiny-org/tiny-llama", tiny_model_dir)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield home
    assert not attempts, f"network connections were attempted: {attempts}"


def test_a_hub_id_resolves_from_the_local_cache_and_an_absent_one_is_named(hub_home, tmp_path, monkeypatch):
    path = resolve_model("tiny-org/tiny-llama", "policy")
    assert Path(path).parent.name == "snapshots" and (Path(path) / "config.json").exists()
    assert content_id("tiny-org/tiny-llama") == content_id(path)  # a run from the hub id is fingerprinted by its content
    for key, call in [
        ("baseline", lambda: resolve_model("tiny-org/absent", "baseline")),
        ("reward model", lambda: load_reward_model("tiny-org/absent")),
    ]:
        with pytest.raises(ModelError) as error:
            call()
        message = str(error.value)
        assert (
            message.startswith(f"{key} 'tiny-org/absent'")
            and "not in the local cache" in message
            and "hf download tiny-org/absent" in message
        )
    result = CliRunner().invoke(app, ["generate", "model=tiny-org/absent", "limit=1"])  # one red sentence, exit code 2
    assert result.exit_code == 2 and "model 'tiny-org/absent': no such local directory" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    monkeypatch.chdir(tmp_path)
    Path("tiny-org/tiny-llama").mkdir(parents=True)  # a local folder of that name wins over the hub id
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model("tiny-org/tiny-llama")


def test_a_saved_policy_has_a_card_and_loads_with_plain_transformers(hub_home, tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    argv = ["model=tiny-org/tiny-llama", f"data={tiny_data['demos']}", f"output_dir={tmp_path / 'sft'}", "max_steps=2"]
    summary = train_sft(load_config(SFTConfig, None, [*argv, "precision=fp32"]))
    model_dir = tmp_path / "sft" / "model"
    meta = read_card_metadata(model_dir / MODEL_CARD)
    assert meta["base_model"] == "tiny-org/tiny-llama" and meta["library_name"] == "tether"
    assert meta["pipeline_tag"] == "text-generation" and {"tether", "rlhf", "sft"} <= set(meta["tags"]) and "datasets" not in meta
    card = (model_dir / MODEL_CARD).read_text()
    assert "`sft` stage" in card and str(tiny_data["demos"]) in card and "AutoModelForCausalLM" in card
    assert f"| eval_loss | {summary['eval_loss']:.4g} |" in card and "max_steps: 2" in card  # the metrics and the config

    exec(card.split("```python\n")[1].split("```")[0], {})  # the card's usage lines, run as written
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=3, do_sample=False)
    assert output.shape[1] == ids["input_ids"].shape[1] + 3

    # the card is no part of the folder's fingerprint; a DPO policy trained from the SFT run has the SFT run's base
    before = content_id(str(model_dir))
    (model_dir / MODEL_CARD).write_text(card + "rewritten")
    assert content_id(str(model_dir)) == before
    dpo = [f"policy={model_dir}", f"data={tiny_data['prefs']}", f"output_dir={tmp_path / 'dpo'}", "max_steps=1", "batch_size=2"]
    train_dpo(load_config(DPOConfig, None, [*dpo, "precision=fp32"]))
    meta = read_card_metadata(tmp_path / "dpo" / "model" / MODEL_CARD)
    assert meta["base_model"] == "tiny-org/tiny-llama" and "dpo" in meta["tags"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "dpo" / "model")


def test_a_saved_reward_model_has_a_card_and_its_normalised_reward_with_plain_transformers(tiny_model_dir, tiny_data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    argv = [f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", f"output_dir={tmp_path / 'rm'}", "max_steps=2", "batch_size=4"]
    summary = train_reward(load_config(RewardConfig, None, [*argv, "precision=fp32"]))
    model_dir = tmp_path / "rm" / "model"
    meta = read_card_metadata(model_dir / MODEL_CARD)
    assert meta["pipeline_tag"] == "text-classification" and "reward-model" in meta["tags"] and "base_model" not in meta  # a local trunk
    card = (model_dir / MODEL_CARD).read_text()
    norm = json.loads((model_dir / "tether_reward.json").read_text())
    assert "r = gain * raw + bias" in card and f"gain = {norm['gain']:.4g}" in card and "normalized_reward" in card
    assert f"| eval_accuracy | {summary['eval_accuracy']:.4g} |" in card

    assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_labels == 1
    prompts, responses = ["Name two primary colors.", "List three fruits."], ["Red and blue.", "no no no"]
    plain = normalized_reward(str(model_dir), prompts, responses)
    rm = RewardModel.load(str(model_dir))
    ids, mask = encode_texts(rm.tokenizer, prompts, responses, 192, 128)
    torch.testing.assert_close(plain, rm.scores(ids, mask).cpu(), atol=1e-5, rtol=1e-5)  # what tether's own loading gives

    # the card's snippet, run as written
    snippet = card.split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(snippet, scope)
    assert scope["reward"](prompts[0], responses[0]) == pytest.approx(plain[0].item(), abs=1e-5)
