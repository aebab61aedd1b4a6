"""Every accelerate config shipped in accelerate_configs/ must load with accelerate's own loader.

Offline and fast: only parses YAML through
``accelerate.commands.config.config_args.load_config_from_file``; nothing is launched.
"""

from pathlib import Path

import pytest

from accelerate.commands.config import config_args
from accelerate.utils import DistributedType

CONFIG_DIR = Path(__file__).parents[1] / "accelerate_configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))

# One entry per shipped file. A new file without an entry here fails the test.
# "top" = attributes of ClusterConfig; "deepspeed" / "fsdp" = keys of the nested dicts.
EXPECTED = {
    "cpu.yaml": {
        "top": {
            "distributed_type": DistributedType.NO,
            "mixed_precision": "no",
            "use_cpu": True,
            "num_processes": 1,
            "num_machines": 1,
        },
    },
    "single_gpu.yaml": {
        "top": {
            "distributed_type": DistributedType.NO,
            "mixed_precision": "bf16",
            "use_cpu": False,
            "num_processes": 1,
            "num_machines": 1,
        },
    },
    "multi_gpu.yaml": {
        "top": {
            "distributed_type": DistributedType.MULTI_GPU,
            "mixed_precision": "bf16",
            "use_cpu": False,
            "num_processes": 8,
            "num_machines": 1,
        },
    },
    "fsdp.yaml": {
        "top": {
            "distributed_type": DistributedType.FSDP,
            "mixed_precision": "bf16",
            "num_processes": 8,
            "num_machines": 1,
        },
        "fsdp": {
            "fsdp_version": 2,
            # FSDP2 sharding strategy: True == FULL_SHARD.
            "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_offload_params": False,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
        },
    },
    "deepspeed_zero2.yaml": {
        "top": {
            "distributed_type": DistributedType.DEEPSPEED,
            "mixed_precision": "bf16",
            "num_processes": 8,
            "num_machines": 1,
        },
        "deepspeed": {
            "zero_stage": 2,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": False,
        },
    },
    "deepspeed_zero3.yaml": {
        "top": {
            "distributed_type": DistributedType.DEEPSPEED,
            "mixed_precision": "bf16",
            "num_processes": 8,
            "num_machines": 1,
        },
        "deepspeed": {
            "zero_stage": 3,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": True,
            "zero3_save_16bit_model": True,
        },
    },
    "multi_node.yaml": {
        "top": {
            "distributed_type": DistributedType.MULTI_GPU,
            "mixed_precision": "bf16",
            "num_machines": 2,
            "num_processes": 16,
            "machine_rank": 0,
            "main_process_ip": "10.0.0.1",
            "main_process_port": 29500,
            "rdzv_backend": "static",
        },
    },
}

# Values the FSDP plugin / launcher accept (accelerate/utils/constants.py).
FSDP_AUTO_WRAP_POLICIES = {"TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"}
FSDP_STATE_DICT_TYPES = {"FULL_STATE_DICT", "LOCAL_STATE_DICT", "SHARDED_STATE_DICT"}
FSDP1_SHARDING = {"FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"}
DS_OFFLOAD_DEVICES = {"none", "cpu", "nvme"}
# Keys that DeepSpeed + transformers.Trainer must fill from TrainingArguments ("auto").
DS_KEYS_LEFT_TO_TRAINER = {"gradient_accumulation_steps", "gradient_clipping"}


def test_required_configs_present():
    names = {p.name for p in CONFIG_FILES}
    assert {"cpu.yaml", "single_gpu.yaml", "multi_gpu.yaml"} <= names, names


def test_every_config_has_expectations():
    missing = sorted({p.name for p in CONFIG_FILES} - set(EXPECTED))
    assert not missing, f"add an EXPECTED entry in {__file__} for: {missing}"
    stale = sorted(set(EXPECTED) - {p.name for p in CONFIG_FILES})
    assert not stale, f"EXPECTED lists files that do not exist in {CONFIG_DIR}: {stale}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_loads_with_accelerate(path):
    assert path.name in EXPECTED, f"no EXPECTED entry for {path.name}"
    expected = EXPECTED[path.name]

    cfg = config_args.load_config_from_file(str(path))
    assert isinstance(cfg, config_args.ClusterConfig)

    for key, value in expected["top"].items():
        assert getattr(cfg, key) == value, f"{path.name}: {key}={getattr(cfg, key)!r}, expected {value!r}"

    dt = cfg.distributed_type
    if dt == DistributedType.NO:
        assert cfg.num_processes == 1
    else:
        assert cfg.num_processes >= 2
        assert cfg.num_processes % cfg.num_machines == 0, "num_processes is the total over all machines"
    if cfg.num_machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port
        assert 0 <= cfg.machine_rank < cfg.num_machines
    assert cfg.use_cpu == (path.name == "cpu.yaml")

    # Nested sections: only present for the matching distributed_type.
    if dt == DistributedType.FSDP:
        fsdp = cfg.fsdp_config
        for key, value in expected["fsdp"].items():
            assert fsdp.get(key) == value, f"{path.name}: fsdp_config[{key!r}]={fsdp.get(key)!r}"
        assert all(k.startswith("fsdp_") for k in fsdp), sorted(fsdp)
        # The sharding-strategy key for the declared FSDP version.
        if fsdp["fsdp_version"] == 2:
            assert isinstance(fsdp["fsdp_reshard_after_forward"], bool)
            assert "fsdp_sharding_strategy" not in fsdp  # FSDP1-only (deprecated)
        else:
            strategy = fsdp.get("fsdp_reshard_after_forward", fsdp.get("fsdp_sharding_strategy"))
            assert strategy in FSDP1_SHARDING
        assert fsdp["fsdp_auto_wrap_policy"] in FSDP_AUTO_WRAP_POLICIES
        assert fsdp["fsdp_state_dict_type"] in FSDP_STATE_DICT_TYPES
        # accelerate launch refuses cpu_ram_efficient_loading without sync_module_states.
        if fsdp.get("fsdp_cpu_ram_efficient_loading"):
            assert fsdp.get("fsdp_sync_module_states", True) is True
    else:
        assert cfg.fsdp_config == {}

    if dt == DistributedType.DEEPSPEED:
        ds = cfg.deepspeed_config
        for key, value in expected["deepspeed"].items():
            assert ds.get(key) == value, f"{path.name}: deepspeed_config[{key!r}]={ds.get(key)!r}"
        assert ds["zero_stage"] in (0, 1, 2, 3)
        assert ds.get("offload_optimizer_device", "none") in DS_OFFLOAD_DEVICES
        assert ds.get("offload_param_device", "none") in DS_OFFLOAD_DEVICES
        assert not (DS_KEYS_LEFT_TO_TRAINER & set(ds)), "leave these to TrainingArguments"
        if ds["zero_stage"] != 3:
            assert not ds.get("zero3_init_flag"), "zero3_init_flag only applies to ZeRO-3"
    else:
        assert cfg.deepspeed_config == {}
