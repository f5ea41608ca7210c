"""DeepSpeed config reading, "auto" filling and validation (pure functions, no processes)."""
import json
from pathlib import Path

import pytest

from loretta_ds.distributed.ds_config import RunFacts, load_ds_config, resolve_ds_config, zero_stage

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["zero3_offload.json", "zero3.json", "zero2.json"]


def facts(**overrides) -> RunFacts:
    values = dict(world_size=2, lr=None, warmup_steps=5, total_steps=100, grad_clip=1.0, bf16=False,
                  hidden_size=64, max_trainable_numel=640, total_trainable_numel=5000)
    values.update(overrides)
    return RunFacts(**values)


def shipped(name: str) -> dict:
    return load_ds_config(ROOT / "ds_configs" / name)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_fill_every_auto(name):
    config, _ = resolve_ds_config(shipped(name), facts(micro_batch_size=4, grad_accum=2, lr=3e-3, bf16=True))
    assert "auto" not in json.dumps(config)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 4 * 2 * 2
    assert config["optimizer"]["params"]["lr"] == 3e-3
    assert config["scheduler"]["params"]["warmup_num_steps"] == 5
    assert config["scheduler"]["params"]["total_num_steps"] == 100
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is True


def test_zero3_offload_config_offloads_params_and_optimizer_with_pinned_memory():
    zero = shipped("zero3_offload.json")["zero_optimization"]
    assert zero["stage"] == 3
    for key in ("offload_param", "offload_optimizer"):
        assert zero[key]["device"] == "cpu" and zero[key]["pin_memory"] is True
    assert zero_stage(shipped("zero3.json")) == 3 and zero_stage(shipped("zero2.json")) == 2


def test_persistence_threshold_covers_the_largest_trainable_tensor():
    config, _ = resolve_ds_config(shipped("zero3.json"), facts(max_trainable_numel=12345, total_trainable_numel=99999))
    zero = config["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] == 12345
    assert zero["stage3_model_persistence_threshold"] >= 99999


def test_small_frozen_tensors_stay_whole_too():
    """Frozen norms (hidden 768: 768 values) must not be partitioned when the largest trainable
    tensor is smaller (a TT-only rep run: 580): "auto" is at least 10 x hidden, and the model-wide
    budget covers the trainable tensors plus every frozen one under the threshold."""
    norms, weights = (768,) * 5, (589_824,) * 8
    config, _ = resolve_ds_config(shipped("zero3_offload.json"), facts(
        hidden_size=768, max_trainable_numel=580, total_trainable_numel=4640, frozen_numels=norms + weights))
    zero = config["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] == 7680
    assert zero["stage3_model_persistence_threshold"] >= 4640 + sum(norms)
    many_norms = (8192,) * 161  # LLaMA-2-70B: 1.3M norm values, more than the 1e6 floor
    config, _ = resolve_ds_config(shipped("zero3.json"), facts(
        hidden_size=8192, max_trainable_numel=5000, total_trainable_numel=348_800, frozen_numels=many_norms))
    assert config["zero_optimization"]["stage3_model_persistence_threshold"] == 348_800 + 8192 * 161
    # A numeric budget that covers the adapter but not the frozen norms persisted before it is raised.
    raw = shipped("zero3.json")
    raw["zero_optimization"]["stage3_model_persistence_threshold"] = 400_000
    config, notes = resolve_ds_config(raw, facts(
        hidden_size=8192, max_trainable_numel=5000, total_trainable_numel=348_800, frozen_numels=many_norms))
    assert config["zero_optimization"]["stage3_model_persistence_threshold"] == 348_800 + 8192 * 161
    assert any("raised from 400000" in n for n in notes)


def test_too_small_persistence_threshold_is_raised_with_a_note():
    raw = shipped("zero3.json")
    raw["zero_optimization"]["stage3_param_persistence_threshold"] = 100
    config, notes = resolve_ds_config(raw, facts(max_trainable_numel=4096))
    assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 4096
    assert any("raised from 100 to 4096" in n for n in notes)


def test_default_global_batch_is_split_over_the_processes():
    for world, micro in ((1, 16), (2, 8), (4, 4)):
        config, _ = resolve_ds_config(shipped("zero2.json"), facts(world_size=world))
        assert config["train_batch_size"] == 16
        assert config["train_micro_batch_size_per_gpu"] == micro


def test_numeric_global_batch_derives_the_accumulation():
    raw = shipped("zero2.json")
    raw["train_batch_size"] = 32
    config, _ = resolve_ds_config(raw, facts(world_size=2, micro_batch_size=4))
    assert config["gradient_accumulation_steps"] == 4


def test_global_batch_that_does_not_divide_the_world_size_is_an_error():
    raw = shipped("zero2.json")
    raw["train_batch_size"] = 10
    with pytest.raises(ValueError, match="train_batch_size=10.*does not divide into 4 process"):
        resolve_ds_config(raw, facts(world_size=4, micro_batch_size=2))


def test_flag_contradicting_a_config_number_is_an_error():
    raw = shipped("zero2.json")
    raw["train_micro_batch_size_per_gpu"] = 4
    with pytest.raises(ValueError, match="--micro_batch_size 8 contradicts train_micro_batch_size_per_gpu=4"):
        resolve_ds_config(raw, facts(micro_batch_size=8))
    raw = shipped("zero2.json")
    raw["optimizer"]["params"]["lr"] = 1e-4
    with pytest.raises(ValueError, match="--lr 0.001 contradicts optimizer.params.lr"):
        resolve_ds_config(raw, facts(lr=1e-3))
    # Without the flag, the config's number is the run's.
    config, _ = resolve_ds_config(raw, facts())
    assert config["optimizer"]["params"]["lr"] == 1e-4


def test_missing_optimizer_is_an_error():
    raw = shipped("zero3.json")
    del raw["optimizer"]
    with pytest.raises(ValueError, match="no 'optimizer' section"):
        resolve_ds_config(raw, facts())


@pytest.mark.parametrize("stage", [0, 4, "3", None])
def test_unknown_zero_stage_is_an_error(stage):
    raw = shipped("zero3.json")
    raw["zero_optimization"]["stage"] = stage
    with pytest.raises(ValueError, match="unknown ZeRO stage"):
        resolve_ds_config(raw, facts())


def test_param_offload_needs_stage_3():
    raw = shipped("zero2.json")
    raw["zero_optimization"]["offload_param"] = {"device": "cpu"}
    with pytest.raises(ValueError, match="offload_param needs ZeRO stage 3"):
        resolve_ds_config(raw, facts())


def test_bad_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "train_batch_size": "auto",\n  "zero_optimization": {"stage": 3,}\n}\n')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON.*line 3, column"):
        load_ds_config(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ds_config(tmp_path / "missing.json")


def test_unfillable_auto_is_an_error():
    raw = shipped("zero3.json")
    raw["zero_optimization"]["sub_group_size"] = "auto"
    with pytest.raises(ValueError, match="zero_optimization.sub_group_size"):
        resolve_ds_config(raw, facts())


def test_fused_adam_is_replaced_by_torch_adam_without_cuda_unless_offloaded():
    no_offload, _ = resolve_ds_config(shipped("zero3.json"), facts(cuda_available=False))
    assert no_offload["optimizer"]["params"]["torch_adam"] is True
    offload, _ = resolve_ds_config(shipped("zero3_offload.json"), facts(cuda_available=False))
    assert "torch_adam" not in offload["optimizer"]["params"]
    on_gpu, _ = resolve_ds_config(shipped("zero3.json"), facts(cuda_available=True))
    assert "torch_adam" not in on_gpu["optimizer"]["params"]


def test_resolving_does_not_modify_the_input():
    raw = shipped("zero3_offload.json")
    before = json.dumps(raw, sort_keys=True)
    resolve_ds_config(raw, facts())
    assert json.dumps(raw, sort_keys=True) == before


def test_fp16_without_cuda_is_an_error():
    raw = shipped("zero3_offload.json")
    raw["fp16"] = {"enabled": True}
    with pytest.raises(ValueError, match="enables fp16, which needs CUDA.*fp16.enabled"):
        resolve_ds_config(raw, facts(cuda_available=False))
    config, _ = resolve_ds_config(raw, facts(cuda_available=True))
    assert config["fp16"]["enabled"] is True


# Issue: a number in the ds_config silently won over the flag while run_config.json recorded the
# flag. Each key: an explicit flag that disagrees is an error; without the flag the config's number
# is what runs (and what the trainer records).
CONFLICTS = [
    # (where in the config, its number, the flag's RunFacts field, a disagreeing flag value, flag text)
    (("scheduler", "params", "warmup_num_steps"), 50, "warmup_steps", 5, "--warmup_steps 5"),
    (("gradient_clipping",), 0.3, "grad_clip", 1.0, "--grad_clip 1.0"),
    (("bf16", "enabled"), True, "bf16", False, "--bf16 False"),
    (("bf16", "enabled"), False, "bf16", True, "--bf16 True"),
    (("optimizer", "params", "lr"), 1e-4, "lr", 1e-3, "--lr 0.001"),
]


def _set(config: dict, path: tuple[str, ...], value) -> dict:
    section = config
    for key in path[:-1]:
        section = section.setdefault(key, {})
    section[path[-1]] = value
    return config


def _get(config: dict, path: tuple[str, ...]):
    for key in path:
        config = config[key]
    return config


@pytest.mark.parametrize("path, number, field, flag_value, flag_text", CONFLICTS)
def test_a_config_number_and_a_disagreeing_flag_are_an_error(path, number, field, flag_value, flag_text):
    raw = _set(shipped("zero3_offload.json"), path, number)
    with pytest.raises(ValueError, match=f"{flag_text} contradicts {'.'.join(path)}={number!r}"):
        resolve_ds_config(raw, facts(**{field: flag_value}))
    # The same value as the flag is no conflict; no flag: the config's number runs.
    config, _ = resolve_ds_config(raw, facts(**{field: number}))
    assert _get(config, path) == number
    config, _ = resolve_ds_config(raw, facts(**{field: None}))
    assert _get(config, path) == number


def test_run_config_records_the_config_numbers_that_ran(tmp_path):
    """No flag given: the ds_config's numbers run, and run_config.json's "train" (Plan.record, what
    the trainer writes) says so, not the flags' defaults."""
    from loretta_ds.run_config import config_from_args
    from loretta_ds.train_plan import build_plan

    raw = shipped("zero3_offload.json")
    raw["gradient_clipping"] = 0.25
    raw["scheduler"]["params"]["warmup_num_steps"] = 3
    raw["optimizer"]["params"]["lr"] = 2e-3
    raw["bf16"]["enabled"] = True
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(raw))
    plan = build_plan(config_from_args({"ds_config": str(path), "max_steps": 12,
                                        "output_dir": str(tmp_path / "run")}), world_size=1)
    train = plan.record().train
    assert (train["grad_clip"], train["warmup_steps"], train["lr"], train["bf16"]) == (0.25, 3, 2e-3, True)
    assert plan.record().dtype == "bfloat16"


def test_a_total_steps_number_must_match_the_run():
    raw = _set(shipped("zero3_offload.json"), ("scheduler", "params", "total_num_steps"), 1000)
    with pytest.raises(ValueError, match=r"the run's step count .*, 100, contradicts scheduler.params.total_num_steps=1000"):
        resolve_ds_config(raw, facts(total_steps=100))
    config, _ = resolve_ds_config(raw, facts(total_steps=1000))
    assert config["scheduler"]["params"]["total_num_steps"] == 1000


def test_warmup_flag_without_a_scheduler_is_an_error():
    raw = shipped("zero3_offload.json")
    del raw["scheduler"]
    with pytest.raises(ValueError, match="--warmup_steps 5 has no effect"):
        resolve_ds_config(raw, facts(warmup_steps=5))
    resolve_ds_config(raw, facts(warmup_steps=None))


def test_defaults_fill_auto_when_no_flag_is_given():
    config, _ = resolve_ds_config(shipped("zero3_offload.json"),
                                  facts(warmup_steps=None, grad_clip=None, bf16=None, total_steps=400))
    assert config["scheduler"]["params"]["warmup_num_steps"] == 20  # 5% of the steps
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is False


def test_nvme_offload_needs_stage_3_and_an_existing_directory(tmp_path):
    raw = shipped("zero2.json")
    raw["zero_optimization"]["offload_optimizer"] = {"device": "nvme", "nvme_path": str(tmp_path)}
    with pytest.raises(ValueError, match="needs ZeRO stage 3"):
        resolve_ds_config(raw, facts())
    raw = shipped("zero3_offload.json")
    raw["zero_optimization"]["offload_param"] = {"device": "nvme", "nvme_path": str(tmp_path / "missing")}
    with pytest.raises(ValueError, match="missing is not a writable directory"):
        resolve_ds_config(raw, facts())
    raw["zero_optimization"]["offload_param"] = {"device": "nvme"}
    with pytest.raises(ValueError, match="has no nvme_path"):
        resolve_ds_config(raw, facts())
    raw["zero_optimization"]["offload_param"] = {"device": "nvme", "nvme_path": str(tmp_path)}
    resolve_ds_config(raw, facts())


@pytest.mark.parametrize("name", SHIPPED)
def test_warmup_starts_above_zero_and_rises_linearly_to_the_peak(name):
    """The first optimizer step must not run at lr 0 (a short run wasted its first steps)."""
    import torch
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from loretta_ds.distributed.engine import begin_lr_schedule

    config, _ = resolve_ds_config(shipped(name), facts(lr=1e-2, warmup_steps=4, total_steps=20))
    params = config["scheduler"]["params"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    scheduler = WarmupCosineLR(optimizer, **{k: v for k, v in params.items()})
    begin_lr_schedule(scheduler)  # what the trainer does to a fresh run's scheduler
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr the next optimizer step uses
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([2e-3, 4e-3, 6e-3, 8e-3])  # 1/5 ... 4/5 of the peak
    assert lrs[3] < lrs[4] == pytest.approx(1e-2, rel=0.01)  # then the cosine from the peak
