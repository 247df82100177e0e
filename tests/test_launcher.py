"""`accelerate launch` with DeepSpeed or FSDP: the ZeRO stage it asks for becomes tether's own FSDP2 settings
(distributed.launcher_sharding); the 2-process runs are in test_distributed.py."""

import json
from pathlib import Path

import pytest

from tether.config import ConfigError, SFTConfig, load_config
from tether.distributed import apply_launcher
from tether.processes import launcher_precision, launcher_sharding, processes

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "src" / "tether" / "configs" / "accelerate"


def accelerate_env(config_file: Path, *flags: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file F [flags] -m tether sft` gives each process, built by accelerate's own code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults, _ = _validate_launch_command(
        launch_command_parser().parse_args(["--config_file", str(config_file), *flags, "-m", "tether", "sft"])
    )
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("deepspeed_zero2.yaml", {"fsdp": True, "zero_stage": 2, "offload_trainable": False, "asked": "DeepSpeed ZeRO stage 2"}),
        (
            "deepspeed_zero3_offload.yaml",
            {"fsdp": True, "zero_stage": 3, "offload_trainable": True, "asked": "DeepSpeed ZeRO stage 3 with CPU offload"},
        ),
        ("fsdp.yaml", {"fsdp": True, "zero_stage": 3, "offload_trainable": False, "asked": "FSDP FULL_SHARD"}),
    ],
)
def test_shipped_accelerate_configs_become_tethers_sharding(name, expected):
    assert launcher_sharding(accelerate_env(ACCELERATE_CONFIGS / name)) == expected


def test_every_shipped_accelerate_config_is_covered():
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == [
        "deepspeed_zero2.yaml",
        "deepspeed_zero3_offload.yaml",
        "fsdp.yaml",
    ]


def test_a_plain_launch_asks_for_nothing():
    assert launcher_sharding({}) is None
    assert launcher_sharding({"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_USE_FSDP": "false"}) is None


def ds(tmp_path, zero: dict) -> dict[str, str]:
    f = tmp_path / "ds_config.json"
    f.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": zero}))
    # the file decides over the stage flag, as it does for accelerate
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(f)}


def test_a_deepspeed_json_config_decides(tmp_path):
    assert launcher_sharding(ds(tmp_path, {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}})) == {
        "fsdp": True,
        "zero_stage": 2,
        "offload_trainable": True,
        "asked": "DeepSpeed ZeRO stage 2 with CPU offload",
    }
    # stage 1 shards only the optimizer state, which FSDP2 has no stage for: ZeRO-2 makes the same updates in less memory
    assert launcher_sharding(ds(tmp_path, {"stage": 1}))["zero_stage"] == 2
    assert launcher_sharding(ds(tmp_path, {"stage": 0}))["fsdp"] is False
    assert launcher_sharding(ds(tmp_path, {"stage": 3, "offload_param": {"device": "none"}}))["offload_trainable"] is False


def test_deepspeed_requests_tether_can_not_run_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="nvme"):
        launcher_sharding(ds(tmp_path, {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/local"}}))
    with pytest.raises(ConfigError, match=r"zero_optimization.stage: expected 0, 1, 2 or 3, got 'auto'"):
        launcher_sharding(ds(tmp_path, {"stage": "auto"}))
    bad = tmp_path / "broken.json"
    bad.write_text("{zero_optimization: ")
    with pytest.raises(ConfigError, match="broken.json: could not read the DeepSpeed config"):
        launcher_sharding({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(bad)})


@pytest.mark.parametrize("strategy, stage", [("1", 3), ("FULL_SHARD", 3), ("2", 2), ("SHARD_GRAD_OP", 2), ("3", None), ("NO_SHARD", None)])
def test_fsdp1_sharding_strategies(strategy, stage):
    got = launcher_sharding(
        {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": strategy, "FSDP_OFFLOAD_PARAMS": "true"}
    )
    assert got["fsdp"] is (stage is not None) and got["offload_trainable"] is (stage is not None)
    if stage:
        assert got["zero_stage"] == stage


def test_fsdp2_reshard_after_forward_and_hybrid_sharding():
    assert launcher_sharding({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"})["zero_stage"] == 2
    with pytest.raises(ConfigError, match="HYBRID_SHARD: tether shards over every process"):
        launcher_sharding({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "4"})


def test_the_launchers_request_overrides_the_config_and_lora_is_refused_with_it(monkeypatch):
    env = accelerate_env(ACCELERATE_CONFIGS / "deepspeed_zero3_offload.yaml")
    monkeypatch.setattr(processes(), "launcher", launcher_sharding(env))
    monkeypatch.setattr(processes(), "launcher_precision", launcher_precision(env))
    cfg = load_config(SFTConfig, None, ["lora.enabled=false", "precision=fp32", "parallel.activation_checkpointing=true"])
    apply_launcher(cfg)
    assert (cfg.parallel.fsdp, cfg.parallel.zero_stage, cfg.parallel.offload_trainable, cfg.precision) == (True, 3, True, "bf16")
    assert cfg.parallel.activation_checkpointing  # the launcher does not ask about it: the config's stays
    with pytest.raises(
        ConfigError, match="accelerate launch asked for DeepSpeed ZeRO stage 3 with CPU offload: parallel.fsdp=true shards full fine-tuning"
    ):
        apply_launcher(load_config(SFTConfig, None, ["lora.enabled=true"]))


def test_offload_trainable_needs_fsdp():
    with pytest.raises(
        ConfigError, match="in parallel: offload_trainable=true moves the sharded blocks' training state to CPU memory; set fsdp=true"
    ):
        load_config(SFTConfig, None, ["parallel.offload_trainable=true"])
    assert load_config(
        SFTConfig, None, ["parallel.fsdp=true", "lora.enabled=false", "parallel.offload_trainable=true"]
    ).parallel.offload_trainable


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3_offload.yaml", "fsdp.yaml"])
def test_the_launchers_mixed_precision_becomes_tethers_precision(name):
    assert launcher_precision(accelerate_env(ACCELERATE_CONFIGS / name)) == "bf16"  # mixed_precision: bf16 in each
    assert launcher_precision(accelerate_env(ACCELERATE_CONFIGS / name, "--mixed_precision", "fp16")) == "fp16"


def test_no_mixed_precision_leaves_the_stages_own_setting(monkeypatch):
    # "no" is also accelerate's default when nothing was asked, so it must not turn a bf16 config into fp32
    env = accelerate_env(ACCELERATE_CONFIGS / "fsdp.yaml", "--mixed_precision", "no")
    assert launcher_precision({}) is None and launcher_precision(env) is None
    monkeypatch.setattr(processes(), "launcher_precision", launcher_precision(env))
    cfg = load_config(SFTConfig, None, ["precision=bf16"])
    apply_launcher(cfg)
    assert cfg.precision == "bf16"


def test_a_deepspeed_json_decides_the_precision_unless_auto(tmp_path):
    f = tmp_path / "ds_config.json"
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(f)}
    f.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    assert launcher_precision(env) == "bf16"
    f.write_text(json.dumps({"fp16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}}))
    assert launcher_precision(env) is None and launcher_precision({**env, "ACCELERATE_MIXED_PRECISION": "fp16"}) == "fp16"
    f.write_text(json.dumps({"bf16": {"enabled": True}, "fp16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="ds_config.json: bf16.enabled and fp16.enabled are both true"):
        launcher_precision(env)


def test_fp8_is_refused_by_name():
    with pytest.raises(ConfigError, match="--mixed_precision fp8: tether trains in bf16, fp16 or fp32"):
        launcher_precision({"ACCELERATE_MIXED_PRECISION": "fp8"})
