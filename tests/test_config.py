"""Config loading: YAML -> dataclasses, overrides, and errors that name the key."""

import dataclasses
import re
from pathlib import Path

import pytest

from tether.config import (
    BoNConfig,
    CollectConfig,
    ConfigError,
    DPOConfig,
    EvalConfig,
    GenerateConfig,
    GRPOConfig,
    ParallelSettings,
    PPOConfig,
    RewardConfig,
    RewardSourceSettings,
    RSConfig,
    RunConfig,
    SFTConfig,
    describe_text,
    load_config,
    parse_yaml,
    resolve_path,
    save_config,
    stage_config,
)
from tether.pipeline import check_wiring, stage_configs

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "tether" / "configs"
# a shipped config's dataclass is told by its folder: configs/<stage>/*.yaml; top-level files are run configs
BY_FOLDER = {
    "sft": SFTConfig,
    "collect": CollectConfig,
    "reward": RewardConfig,
    "ppo": PPOConfig,
    "eval": EvalConfig,
    "generate": GenerateConfig,
    "dpo": DPOConfig,
    "grpo": GRPOConfig,
    "bon": BoNConfig,
    "rs": RSConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    if path.parent.name == "constitution":  # not a stage config: a list of principles (feedback/constitution.py)
        from tether.feedback.constitution import load_constitution

        assert load_constitution(path).principles
        return
    if path.parent.name == "accelerate":  # accelerate launch's own configs: tests/test_launcher.py reads them
        return
    cls = BY_FOLDER.get(path.parent.name, RunConfig) if path.parent != CONFIGS else RunConfig
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)


NOT_STAGE_CONFIGS = {"accelerate", "constitution"}
"""Shipped folders of other files: accelerate launch's own configs (tests/test_launcher.py) and constitutions."""


def as_written(key: str, value, loaded) -> int:
    """Assert that `loaded` (a config's value) is `value` (what the YAML wrote at `key`), section by section; the
    number of settings compared."""
    if dataclasses.is_dataclass(loaded):
        assert isinstance(value, dict), key
        return sum(as_written(f"{key}.{name}", v, getattr(loaded, name)) for name, v in value.items())
    if isinstance(loaded, (list, tuple)) and isinstance(value, list):
        assert len(loaded) == len(value), key
        return sum(as_written(f"{key}[{i}]", v, x) for i, (v, x) in enumerate(zip(value, loaded)))
    if isinstance(loaded, float) and isinstance(value, int) and not isinstance(value, bool):
        assert loaded == value, key  # 1 written for a float setting
    else:
        assert loaded == value and type(loaded) is type(value), (key, value, loaded)
    return 1


def test_every_shipped_config_is_read_as_written(tmp_path):
    """Each shipped YAML, read by the class of the command its folder names (configs/ppo/*.yaml by `tether ppo`; the
    top-level files by `tether run`): every key it sets reaches the config as written (none renamed, reinterpreted or
    dropped on the way), the config.yaml a run writes beside itself reads back as the same config, and a run config
    is one `tether run` accepts (no stage setting it would replace) and wires into each stage's config."""
    shipped = [p for p in sorted(CONFIGS.rglob("*.yaml")) if p.parent.name not in NOT_STAGE_CONFIGS]
    assert {"bon", "dpo", "grpo", "ppo", "reward", "rs", "sft"} <= {p.parent.name for p in shipped}  # every subfolder is read
    assert CONFIGS / "demo.yaml" in shipped
    for path in shipped:
        cls = RunConfig if path.parent == CONFIGS else stage_config(path.parent.name)  # an unknown folder is an error
        cfg = load_config(cls, path)
        written = parse_yaml(path.read_text(), str(path))
        assert sum(as_written(key, value, getattr(cfg, key)) for key, value in written.items()) >= len(written) > 0
        save_config(cfg, tmp_path / path.name)
        assert load_config(cls, tmp_path / path.name) == cfg, path
        if cls is RunConfig:
            check_wiring(cfg)
            wired = stage_configs(cfg)
            assert all(isinstance(wired[name], type(getattr(cfg, name))) for name in wired)


def test_overrides_nested_and_typed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 2\nlora:\n  r: 4\n")
    cfg = load_config(SFTConfig, f, ["lora.enabled=true", "optim.lr=1e-4", "max_steps=7"])
    assert cfg.epochs == 2 and cfg.lora.r == 4 and cfg.lora.enabled is True
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.max_steps == 7


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 1\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown key 'learning_rate'"):
        load_config(SFTConfig, f)


def test_unknown_nested_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'lora\.rank'"):
        load_config(SFTConfig, None, ["lora.rank=8"])


def test_unknown_key_suggests_the_key_meant():
    with pytest.raises(ConfigError, match=r"unknown key 'lr' \(did you mean 'optim\.lr'\?\)"):
        load_config(SFTConfig, None, ["lr=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown key 'max_step' \(did you mean 'max_steps'\?\)"):
        load_config(SFTConfig, None, ["max_step=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'ppo\.kl\.targt' \(did you mean 'ppo\.kl\.target'\?\)"):
        load_config(RunConfig, None, ["ppo.kl.targt=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'; valid keys here"):  # nothing close: no suggestion
        load_config(SFTConfig, None, ["zzz=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'epochs': expected an integer, got 'two'"):
        load_config(SFTConfig, None, ["epochs=two"])
    with pytest.raises(ConfigError, match=r"'lora.enabled': expected true or false"):
        load_config(SFTConfig, None, ["lora.enabled=maybe"])
    with pytest.raises(ConfigError, match=r"'optim.schedule': expected one of"):
        load_config(SFTConfig, None, ["optim.schedule=exponential"])


def test_invalid_combination_is_rejected():
    with pytest.raises(ConfigError, match="batch_size .* multiple of mini_batch_size"):
        load_config(PPOConfig, None, ["batch_size=10", "mini_batch_size=4"])
    with pytest.raises(ConfigError, match="responses_per_prompt"):
        load_config(CollectConfig, None, ["responses_per_prompt=1"])
    with pytest.raises(ConfigError, match="parallel.fsdp=true shards full fine-tuning.*lora.enabled=false"):
        load_config(DPOConfig, None, ["parallel.fsdp=true"])  # DPO trains LoRA by default
    assert load_config(SFTConfig, None, ["parallel.fsdp=true", "lora.enabled=false"]).parallel.fsdp
    grpo = ["reward=[{type: function, path: x.py:f}]", "parallel.fsdp=true"]
    with pytest.raises(ConfigError, match="parallel.fsdp=true shards full fine-tuning"):
        load_config(GRPOConfig, None, grpo)  # GRPO trains LoRA by default
    assert load_config(GRPOConfig, None, [*grpo, "lora.enabled=false"]).parallel.fsdp


@pytest.mark.parametrize("cls", [SFTConfig, RewardConfig, PPOConfig, DPOConfig, GRPOConfig])
def test_parallel_settings_are_one_section_and_the_old_keys_are_refused_by_their_new_name(cls, tmp_path):
    grpo = ["reward=[{type: function, path: x.py:f}]"] if cls is GRPOConfig else []
    cfg = load_config(
        cls,
        None,
        [
            *grpo,
            "lora.enabled=false",
            "parallel.fsdp=true",
            "parallel.zero_stage=2",
            "parallel.offload_trainable=true",
            "parallel.activation_checkpointing=true",
        ],
    )
    assert cfg.parallel == ParallelSettings(fsdp=True, zero_stage=2, offload_trainable=True, activation_checkpointing=True)
    for key, value in (("fsdp", "true"), ("zero_stage", "2"), ("offload_trainable", "true"), ("activation_checkpointing", "true")):
        with pytest.raises(
            ConfigError,
            match=rf"^'{key}' is now 'parallel.{key}': write parallel.{key}={value} as an override, "
            rf"or in YAML `parallel: {{{key}: {value}}}`$",
        ):
            load_config(cls, None, [*grpo, f"{key}={value}"])
    f = tmp_path / "old.yaml"
    f.write_text("lora: {enabled: false}\nfsdp: true\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: 'fsdp' is now 'parallel.fsdp'"):
        load_config(cls, f, grpo)
    with pytest.raises(ConfigError, match=r"'ppo.activation_checkpointing' is now 'ppo.parallel.activation_checkpointing'"):
        load_config(RunConfig, None, ["ppo.activation_checkpointing=true"])


def test_the_parallel_section_checks_its_own_keys():
    with pytest.raises(ConfigError, match="offload_trainable=true moves the sharded blocks' training state to CPU memory; set fsdp=true"):
        ParallelSettings(offload_trainable=True)
    with pytest.raises(ConfigError, match="zero_stage=2 chooses how fsdp=true holds a block's weights"):
        ParallelSettings(zero_stage=2)
    with pytest.raises(ConfigError, match=r"^in parallel: zero_stage=2 chooses"):
        load_config(SFTConfig, None, ["parallel.zero_stage=2"])
    assert ParallelSettings(fsdp=True, zero_stage=2, offload_trainable=True).zero_stage == 2


def test_bad_yaml_and_bad_override(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: not valid YAML: while parsing a flow sequence"):
        load_config(SFTConfig, f)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(SFTConfig, None, ["epochs"])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(SFTConfig, tmp_path / "missing.yaml")


def test_shared_paths_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("TETHER_SHARED_DATA", str(tmp_path))
    assert resolve_path("shared:x.jsonl") == str(tmp_path / "x.jsonl")
    assert resolve_path("plain.jsonl") == "plain.jsonl"


def test_a_section_given_in_part_keeps_its_own_defaults(tmp_path):
    # PPO's LoRA is on by default and its optimizer has its own lr: changing one key of a
    # section must leave the others at the section's defaults, not at the class's
    cfg = load_config(PPOConfig, None, ["reward=[{type: model, path: rm}]", "lora.r=4", "optim.max_grad_norm=0.5"])
    assert cfg.lora.enabled and cfg.lora.r == 4
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.schedule == "linear" and cfg.optim.max_grad_norm == 0.5
    f = tmp_path / "run.yaml"
    f.write_text("ppo:\n  lora: {alpha: 8}\n")
    run = load_config(RunConfig, f)
    assert run.ppo.lora.enabled and run.ppo.lora.alpha == 8 and run.ppo.optim.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "cls, key, value, spelling",
    [
        (PPOConfig, "reward_model", "runs/rm", "reward: [{type: model, path: runs/rm}]"),
        (PPOConfig, "reward_function", "my.py:score", "reward: [{type: function, path: my.py:score}]"),
        (
            PPOConfig,
            "reward_std_coef",
            1.5,
            "reward: [{type: model, path: runs/reward/model, std_coef: 1.5}]` (the model source's std_coef",
        ),
        (DPOConfig, "reward_model", "runs/rm", "reward: [{type: model, path: runs/rm}]"),
        (DPOConfig, "reward_function", "my.py:score", "reward: [{type: function, path: my.py:score}]"),
        (DPOConfig, "judge", "default", "reward: [{type: judge, path: default, judge_against: group}]"),
        (
            DPOConfig,
            "constitution",
            "mine.yaml",
            "reward: [{type: judge, path: default, judge_against: group, constitution: mine.yaml}]` (the judge source's constitution",
        ),
    ],
)
def test_old_reward_keys_are_refused_with_the_new_spelling(tmp_path, cls, key, value, spelling):
    # one `reward:` list in every stage that takes a reward: the old keys are named, with the setting that replaced them,
    # in a file, an override, a run config's section and a keyword argument
    message = re.escape(f"{key} was replaced by `{spelling}")
    f = tmp_path / "c.yaml"
    f.write_text(f"{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: {message}"):
        load_config(cls, f)
    with pytest.raises(ConfigError, match=rf"^{message}"):
        load_config(cls, None, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=rf"^{message}"):
        cls(**{key: value})
    if cls is PPOConfig:
        with pytest.raises(ConfigError, match=rf"^ppo\.{message}"):
            load_config(RunConfig, None, [f"ppo.{key}={value}"])
    listed = describe_text(cls)
    assert f"\n{key}:" not in listed and "\nreward: list[RewardSourceSettings]" in listed


def test_ppo_reward_is_one_list_with_a_reward_model_by_default():
    cfg = PPOConfig()
    assert cfg.reward == [RewardSourceSettings(type="model", path="runs/reward/model")]
    assert "reward_model" not in dataclasses.asdict(cfg) and dataclasses.replace(cfg, steps=3).reward == cfg.reward
    with pytest.raises(ConfigError, match="set reward: a list of reward sources"):
        PPOConfig(reward=[])
    with pytest.raises(
        ConfigError, match="value_model=reward_adapter starts from the reward model: set reward to one source of type model"
    ):
        load_config(PPOConfig, None, ["value_model=reward_adapter", "reward=[{type: model, path: rm}, {type: function, path: f.py:g}]"])


def test_run_wires_the_reward_stage_into_ppos_reward():
    # the run's PPO is scored by the reward stage's model: the one model source's path is the run's, its std_coef
    # (an ensemble's mean - k * std) and weight the user's; any other reward is refused by name
    run = load_config(RunConfig, None, ["output_dir=runs/x"])
    check_wiring(run)
    assert stage_configs(run)["ppo"].reward == [RewardSourceSettings(type="model", path="runs/x/reward/model")]
    mine = load_config(RunConfig, None, ["output_dir=runs/x", "ppo.reward=[{type: model, path: runs/reward/model, std_coef: 1.5}]"])
    check_wiring(mine)
    assert stage_configs(mine)["ppo"].reward == [RewardSourceSettings(type="model", path="runs/x/reward/model", std_coef=1.5)]
    for given in ("[{type: model, path: /my/rm}]", "[{type: function, path: f.py:score}]"):
        refused = load_config(RunConfig, None, ["output_dir=runs/x", f"ppo.reward={given}"])
        with pytest.raises(
            ConfigError, match=re.escape(f"ppo.reward={given} (`tether run` sets it to [{{type: model, path: runs/x/reward/model}}]")
        ):
            check_wiring(refused)
