"""Every numeric and enum field is checked when a config is built, from a file, from overrides or in Python, and the
error names the key as the user wrote it (`ppo.optim.lr`), the value and what was expected; YAML mistakes name the
file and line; `tether config STAGE` lists every key."""

import dataclasses
import math
import re
import typing

import pytest
import yaml
from typer.testing import CliRunner

import tether.config as C
from tether.cli import app
from tether.config import (
    BoNConfig,
    CollectConfig,
    ConfigError,
    DPOConfig,
    EarlyStopSettings,
    EvalConfig,
    GenerateConfig,
    GenerationSettings,
    GRPOConfig,
    JudgeConfig,
    OptimSettings,
    PPOConfig,
    ReviseConfig,
    RewardConfig,
    RewardSourceSettings,
    RSConfig,
    RunConfig,
    SFTConfig,
    load_config,
)

REWARD = "reward=[{type: function, path: 'my.py:score'}]"
CLASSES = [cls for cls in vars(C).values() if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == C.__name__]


def numeric_fields(cls):
    """(name, int or float) of every int/float field of `cls`, Optional ones included, Literal ones not."""
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union else [tp]
        if len(args) == 1 and args[0] in (int, float):
            yield f.name, args[0]


def bad_value(cls, name, kind):
    """A value just outside the field's range: below its lower bound, or nan where it has none."""
    rule = C.RANGES.get(f"{cls.__name__}.{name}", C.RANGES.get(name))
    interval = rule[0] if isinstance(rule, tuple) else rule
    low = float(interval[1:-1].split(",")[0])
    if low == -math.inf:
        return math.nan
    bad = low - 1 if interval[0] == "[" else low
    return int(bad) if kind is int else bad


# ---------------------------------------------------------------------------- the cases, and more, by override

CASES = [
    # (config class, overrides, the error message, matched from its start)
    (SFTConfig, ["batch_size=0"], r"batch_size must be at least 1, got 0$"),
    (SFTConfig, ["batch_size=-4"], r"batch_size must be at least 1, got -4$"),
    (PPOConfig, ["mini_batch_size=0"], r"mini_batch_size must be at least 1, got 0$"),
    (SFTConfig, ["optim.lr=nan"], r"optim\.lr must be a finite number >= 0, got nan \(0 leaves the weights where they are\)$"),
    (SFTConfig, ["optim.lr=.inf"], r"optim\.lr must be a finite number >= 0, got inf"),
    (SFTConfig, ["optim.lr=-1e-4"], r"optim\.lr must be >= 0, got -0\.0001"),
    (SFTConfig, ["eval_fraction=1.0"], r"eval_fraction must be in \[0, 1\), got 1\.0 \(the rest is trained on\)$"),
    (SFTConfig, ["max_prompt_tokens=0"], r"max_prompt_tokens must be at least 1, got 0$"),
    (SFTConfig, ["grad_accum=0"], r"grad_accum must be at least 1, got 0$"),
    (SFTConfig, ["limit=0"], r"limit must be at least 1, got 0$"),
    (SFTConfig, ["save_every=-1"], r"save_every must be at least 0, got -1 \(0 = only at the end\)$"),
    (SFTConfig, ["optim.warmup_ratio=1"], r"optim\.warmup_ratio must be in \[0, 1\), got 1\.0$"),
    (SFTConfig, ["lora.dropout=1"], r"lora\.dropout must be in \[0, 1\), got 1\.0$"),
    (RewardConfig, ["max_response_tokens=0"], r"max_response_tokens must be at least 1, got 0$"),
    (RewardConfig, ["label_smoothing=0.5"], r"label_smoothing must be in \[0, 0\.5\), got 0\.5$"),
    (RewardConfig, ["ensemble=0"], r"ensemble must be at least 1, got 0$"),
    (CollectConfig, ["responses_per_prompt=1"], r"responses_per_prompt must be at least 2, got 1 \(two responses make a pair\)$"),
    (CollectConfig, ["generation.top_p=0"], r"generation\.top_p must be in \(0, 1\], got 0\.0$"),
    (CollectConfig, ["generation.temperature=0"], r"generation\.temperature must be > 0, got 0\.0 \(use a small value"),
    (CollectConfig, ["generation.stop_strings=['', x]"], r"generation\.stop_strings must all be non-empty"),
    (CollectConfig, ["annotator.target_agreement=0.5"], r"annotator\.target_agreement must be in \(0\.5, 1\), got 0\.5"),
    (PPOConfig, ["gamma=1.5"], r"gamma must be in \[0, 1\], got 1\.5$"),
    (PPOConfig, ["kl.horizon=0"], r"kl\.horizon must be at least 1, got 0$"),
    (PPOConfig, ["kl.target=0"], r"kl\.target must be > 0, got 0\.0$"),
    (PPOConfig, ["lora.r=0"], r"lora\.r must be at least 1, got 0$"),
    (PPOConfig, ["seed=-1"], r"seed must be at least 0, got -1$"),
    (PPOConfig, ["early_stop.every=0"], r"early_stop\.every must be at least 1, got 0$"),
    (PPOConfig, ["early_stop.max_kl=.nan"], r"early_stop\.max_kl must be a finite number, got nan$"),
    (PPOConfig, ["ray.cpus_per_model=0"], r"ray\.cpus_per_model must be at least 1, got 0$"),
    (PPOConfig, ["vllm.max_model_len=0"], r"vllm\.max_model_len must be at least 1, got 0$"),
    (PPOConfig, ["value_lr=-1e-5"], r"value_lr must be >= 0, got -1e-05$"),
    (PPOConfig, ["batch_size=10", "mini_batch_size=4"], r"batch_size \(10\) must be a multiple of mini_batch_size \(4\)"),
    (GRPOConfig, [REWARD, "beta=-1"], r"beta must be >= 0, got -1\.0$"),
    (GRPOConfig, [REWARD, "eps_low=1"], r"eps_low must be in \(0, 1\), got 1\.0$"),
    (
        GRPOConfig,
        ["reward=[{type: function, path: 'my.py:score', weight: .nan}]"],
        r"reward\[0\]\.weight must be a finite number, got nan$",
    ),
    (GRPOConfig, ["reward=[{type: model, path: rm, batch_size: 0}]"], r"reward\[0\]\.batch_size must be at least 1, got 0$"),
    (DPOConfig, ["beta=0"], r"beta must be > 0, got 0\.0$"),
    (DPOConfig, ["prompts_per_round=0"], r"prompts_per_round must be at least 1, got 0$"),
    (EvalConfig, ["limit=0"], r"limit must be at least 1, got 0$"),
    (EvalConfig, ["offset=-1"], r"offset must be at least 0, got -1$"),
    (GenerateConfig, ["vllm.gpu_memory_utilization=1"], r"vllm\.gpu_memory_utilization must be in \(0, 1\), got 1\.0$"),
    (JudgeConfig, ["min_strength=1"], r"min_strength must be in \[0, 1\), got 1\.0$"),
    (ReviseConfig, ["generation.max_new_tokens=0"], r"generation\.max_new_tokens must be at least 1, got 0$"),
    (BoNConfig, [REWARD, "n=0"], r"n must be at least 1, got 0 \(samples per prompt\)$"),
    (RSConfig, [REWARD, "sft.batch_size=0"], r"sft\.batch_size must be at least 1, got 0$"),
    # inside `tether run`, every key carries its section
    (RunConfig, ["ppo.mini_batch_size=0"], r"ppo\.mini_batch_size must be at least 1, got 0$"),
    (RunConfig, ["sft.optim.lr=nan"], r"sft\.optim\.lr must be a finite number >= 0, got nan"),
    (RunConfig, ["ppo.generation.max_new_tokens=0"], r"ppo\.generation\.max_new_tokens must be at least 1, got 0$"),
    (RunConfig, ["reward.eval_fraction=1"], r"reward\.eval_fraction must be in \[0, 1\), got 1\.0"),
    (RunConfig, ["iterate.min_labelled=0"], r"iterate\.min_labelled must be in \(0, 1\], got 0\.0$"),
    (RunConfig, ["ppo.batch_size=10", "ppo.mini_batch_size=4"], r"in ppo: batch_size \(10\) must be a multiple of mini_batch_size \(4\)"),
    (RunConfig, ["iterate.labeller=people"], r"in iterate: labeller=people needs db"),
    (RunConfig, ["rounds=0"], r"rounds must be at least 1, got 0$"),
    # types and enums
    (SFTConfig, ["precision=fp8"], r"'precision': expected one of 'bf16', 'fp16', 'fp32', got 'fp8'$"),
    (SFTConfig, ["parallel.zero_stage=1"], r"'parallel.zero_stage': expected one of 2, 3, got 1$"),
    (RewardConfig, ["ties=maybe"], r"'ties': expected one of 'skip', 'half', got 'maybe'$"),
    (RunConfig, ["ppo.kl.estimator=k4"], r"'ppo\.kl\.estimator': expected one of 'k1', 'k2', 'k3', got 'k4'$"),
    (SFTConfig, ["batch_size=true"], r"'batch_size': expected an integer, got True$"),
    (SFTConfig, ["batch_size=2.5"], r"'batch_size': expected an integer, got 2\.5$"),
    (SFTConfig, ["optim.lr=fast"], r"'optim\.lr': expected a number, got 'fast'$"),
    (SFTConfig, ["limit=all"], r"'limit': expected an integer, got 'all'$"),  # an Optional field (was a TypeError)
    # scale_rewards took true / false before it took TRL's names: the old spelling is refused with the new one
    (
        GRPOConfig,
        [REWARD, "scale_rewards=true"],
        r"'scale_rewards': expected one of 'group', 'batch', 'none', got True \(true is now spelled 'group'\)$",
    ),
    (
        GRPOConfig,
        [REWARD, "scale_rewards=false"],
        r"'scale_rewards': expected one of 'group', 'batch', 'none', got False \(false is now spelled 'none'\)$",
    ),
    (
        GRPOConfig,
        [REWARD, "advantage=rloo", "scale_rewards=batch"],
        r"scale_rewards=batch scales advantage=grpo's advantages; with advantage=rloo leave it out$",
    ),
    (DPOConfig, ["ipo_token_mean=true"], r"ipo_token_mean=true is IPO's; set loss=ipo or leave it false \(loss=sigmoid\)$"),
]


@pytest.mark.parametrize("cls, overrides, message", CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_value_is_named_with_its_key(cls, overrides, message):
    with pytest.raises(ConfigError, match="^" + message):
        load_config(cls, None, overrides)


def test_a_bad_value_in_a_file_names_the_file_and_the_key(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("ppo:\n  mini_batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"^.*run\.yaml: ppo\.mini_batch_size must be at least 1, got 0$"):
        load_config(RunConfig, f)
    f.write_text("ppo:\n  batch_size: 10\n  mini_batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"^.*run\.yaml: in ppo: batch_size \(10\) must be a multiple of mini_batch_size \(4\)"):
        load_config(RunConfig, f)
    f.write_text("optim: {lr: .nan}\n")
    with pytest.raises(ConfigError, match=r"^.*run\.yaml: optim\.lr must be a finite number >= 0, got nan"):
        load_config(SFTConfig, f)


@pytest.mark.parametrize("stage", sorted(C.STAGES))
def test_every_numeric_key_is_checked_with_its_full_name(stage):
    """Every int and float key of every stage, `tether run`'s sections included, set just outside its range by an override,
    is refused by a message that starts with the key as the user wrote it."""
    cls = C.STAGES[stage]
    base = [REWARD] if stage in ("grpo", "bon", "rs") else []
    checked = 0
    for row in C.describe(cls):
        if "[]" in row.key or row.type not in ("int", "float", "int | None", "float | None"):
            continue
        owner = cls
        for part in row.key.split(".")[:-1]:
            owner = typing.get_type_hints(owner)[part]
        name = row.key.rsplit(".", 1)[-1]
        value = bad_value(owner, name, int if row.type.startswith("int") else float)
        text = ".nan" if isinstance(value, float) and math.isnan(value) else repr(value)
        with pytest.raises(ConfigError, match=f"^{row.key.replace('.', '[.]')} must be "):
            load_config(cls, None, [*base, f"{row.key}={text}"])
        checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------- built in Python


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SFTConfig(batch_size=0), r"batch_size must be at least 1, got 0$"),
        (lambda: SFTConfig(eval_fraction=1.0), r"eval_fraction must be in \[0, 1\), got 1\.0"),
        (lambda: SFTConfig(max_prompt_tokens=0), r"max_prompt_tokens must be at least 1, got 0$"),
        (lambda: PPOConfig(mini_batch_size=0), r"mini_batch_size must be at least 1, got 0$"),
        (lambda: OptimSettings(lr=float("nan")), r"lr must be a finite number >= 0, got nan"),
        (lambda: GenerationSettings(top_p=1.5), r"top_p must be in \(0, 1\], got 1\.5$"),
        (lambda: EarlyStopSettings(every=0), r"every must be at least 1, got 0$"),
        (lambda: RewardSourceSettings(path="rm", type="model", std_coef=-1), r"std_coef must be >= 0, got -1"),
        (lambda: SFTConfig(batch_size="8"), r"'batch_size': expected an integer, got '8'$"),
        (lambda: SFTConfig(precision="fp8"), r"'precision': expected one of 'bf16', 'fp16', 'fp32', got 'fp8'$"),
        (lambda: SFTConfig(optim={"lr": -1}), r"optim\.lr must be >= 0, got -1\.0"),
        (lambda: SFTConfig(optim=None), r"optim: expected a mapping, got None$"),
        (lambda: dataclasses.replace(SFTConfig(), batch_size=-1), r"batch_size must be at least 1, got -1$"),
    ],
)
def test_a_config_built_in_python_is_checked_too(build, message):
    with pytest.raises(ConfigError, match="^" + message):
        build()


def test_a_config_built_in_python_gets_the_types_a_file_would_give():
    cfg = SFTConfig(optim=OptimSettings(lr=1), output_dir=C.Path("runs") / "x")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.output_dir == "runs/x"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_config_class_checks_its_fields(cls):
    """Each class's __post_init__ calls check_fields first: a value of no field's type is refused, by name, before
    anything else is looked at (GRPOConfig() alone would complain about its missing reward instead)."""
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(ConfigError, match=f"^'{first}': "):
        cls(**{first: object()})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_range_and_refuses_a_value_outside_it(cls):
    for name, kind in numeric_fields(cls):
        rule = C.RANGES.get(f"{cls.__name__}.{name}", C.RANGES.get(name))
        assert rule is not None, f"{cls.__name__}.{name} has no entry in tether.config.RANGES"
        interval = rule[0] if isinstance(rule, tuple) else rule
        assert interval[0] in "[(" and interval[-1] in ")]" and len(interval[1:-1].split(",")) == 2, interval
        with pytest.raises(ConfigError, match=f"^{name} must be "):
            C.check_fields(_with(cls, name, bad_value(cls, name, kind)))


def _with(cls, name, value):
    """An instance of `cls` (built without __init__'s checks) whose field `name` holds `value` and the others their defaults."""
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        setattr(obj, f.name, C._default(f))
    setattr(obj, name, value)
    return obj


def test_ranges_read_as_expected():
    assert C._expected("[1, inf)", integer=True) == "at least 1" and C._expected("[0, inf)", integer=False) == ">= 0"
    assert C._expected("(0, inf)", integer=False) == "> 0" and C._expected("(0, 1]", integer=False) == "in (0, 1]"
    assert C._expected("(-inf, inf)", integer=False) == ""
    assert C._inside(1.0, "(0, 1]") and not C._inside(0.0, "(0, 1]") and C._inside(0.0, "[0, 1)") and not C._inside(1.0, "[0, 1)")


# ---------------------------------------------------------------------------- YAML


def test_a_duplicate_key_names_the_file_the_line_and_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 1\nlora:\n  r: 4\n  alpha: 8\n  r: 8\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5: not valid YAML: duplicate key 'r' \(first given on line 3\)"):
        load_config(SFTConfig, f)
    f.write_text("epochs: 1\nbatch_size: 2\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: not valid YAML: duplicate key 'epochs' \(first given on line 1\)"):
        load_config(SFTConfig, f)
    f.write_text("ppo:\n  reward:\n    - {type: model, path: rm, type: judge}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3: not valid YAML: duplicate key 'type'"):
        load_config(RunConfig, f)


def test_merge_keys_may_still_be_overridden():
    text = "base: &b {r: 4, alpha: 8}\nlora:\n  <<: *b\n  r: 16\n"
    assert C.parse_yaml(text, "c.yaml")["lora"] == {"r": 16, "alpha": 8}


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 1\nlora:\n  r: 4\n    alpha: 8\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: not valid YAML: mapping values are not allowed here"):
        load_config(SFTConfig, f)
    f.write_bytes(b"epochs: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"cannot read config file .*c\.yaml: it is not UTF-8 text"):
        load_config(SFTConfig, f)


def test_an_override_that_is_not_yaml_names_the_override():
    with pytest.raises(
        ConfigError, match=r"""^override 'data=\[oops': not valid YAML: .*; to pass the value as text, quote it: "data='\[oops'"$"""
    ):
        load_config(SFTConfig, None, ["data=[oops"])
    with pytest.raises(ConfigError, match=r"^override 'reward=.*': not valid YAML: duplicate key 'path'"):
        load_config(GRPOConfig, None, ["reward=[{type: model, path: a, path: b}]"])
    assert load_config(SFTConfig, None, ["data='[oops'"]).data == "[oops"  # quoted, it is text


# ---------------------------------------------------------------------------- tether config STAGE

runner = CliRunner()


def test_tether_config_lists_every_key_with_its_type_default_and_meaning():
    result = runner.invoke(app, ["config", "ppo"])
    assert result.exit_code == 0, result.output
    assert "optim.lr: float = 0.0001\n    Peak learning rate.\n" in result.output  # PPO's own default, not OptimSettings'
    assert "mini_batch_size: int = 8\n    Episodes per gradient step.\n" in result.output
    assert "kl.estimator: 'k1' | 'k2' | 'k3' = k1\n" in result.output and "reward[].path: str = ''\n" in result.output
    keys = [line.split(":")[0] for line in result.output.splitlines() if not line.startswith(" ")]
    assert keys == [row.key for row in C.describe(PPOConfig)]
    result = runner.invoke(app, ["config", "run"])
    assert (
        result.exit_code == 0 and "ppo.optim.lr: float = 0.0001\n" in result.output and "sft.optim.lr: float = 2.0e-05\n" in result.output
    )


def test_tether_config_refuses_an_unknown_stage():
    result = runner.invoke(app, ["config", "ppp"])
    assert result.exit_code == 2 and "unknown stage 'ppp'; valid stages: sft, collect, reward, ppo, grpo" in result.output
    assert "Traceback" not in result.output


def test_every_field_has_a_meaning():
    for cls in C.STAGES.values():
        assert [row.key for row in C.describe(cls) if not row.doc] == []


@pytest.mark.parametrize("stage", sorted(C.STAGES))
def test_the_commented_yaml_loads_back_to_the_defaults(stage, tmp_path):
    result = runner.invoke(app, ["config", stage, "--yaml"])
    assert result.exit_code == 0, result.output
    assert "# Peak learning rate.\n" in result.output or stage in ("collect", "eval", "generate", "judge", "revise", "bon")
    f = tmp_path / "c.yaml"
    f.write_text(result.output)
    cls = C.STAGES[stage]
    if stage in ("grpo", "bon", "rs"):  # no default reward: add one, to the file and to the expected config
        assert load_config(cls, f, [REWARD]) == cls(reward=[RewardSourceSettings(type="function", path="my.py:score")])
    else:
        assert load_config(cls, f) == cls()
    assert yaml.safe_load(result.output)  # plain YAML too


def test_the_examples_in_the_override_message_are_real_keys():
    with pytest.raises(ConfigError, match="expected key=value") as e:
        load_config(SFTConfig, None, ["epochs"])
    examples = re.findall(r"\b([\w.]+=[\w.-]+)", str(e.value).split("for example", 1)[1])
    assert len(examples) == 2
    load_config(SFTConfig, None, examples)  # an unknown key would raise
