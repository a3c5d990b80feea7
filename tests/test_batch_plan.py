"""The batch plan printed at the start of every training run (issue #13 item 3): world size, devices,
per-device batch, accumulation and global batch, and ``trainer.global_batch_size`` deriving the
accumulation so that the node count does not change a recipe."""

from __future__ import annotations

import pytest
import yaml
from _training import write_config

from mergevq.config import load_with_origins
from mergevq.errors import ConfigError
from mergevq.training.batch_plan import BatchPlan, launched_world_size, plan_batch
from mergevq.training.run import RUN_INFO_FILE, train

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.mark.parametrize(("devices", "nodes", "accumulation", "world", "global_batch"), [
    (1, 1, None, 1, 16),
    (2, 1, 2, 2, 64),
    (8, 2, None, 16, 256),
])
def test_plan_without_global_batch_size(devices, nodes, accumulation, world, global_batch):
    plan = plan_batch(per_device_batch=16, devices=devices, num_nodes=nodes, accumulation=accumulation,
                      global_batch_size=None, world_size=devices * nodes)
    assert (plan.world_size, plan.global_batch, plan.derived) == (world, global_batch, False)
    assert plan.accumulation == (accumulation or 1)


@pytest.mark.parametrize(("devices", "nodes", "accumulation"), [(1, 1, 16), (2, 1, 8), (8, 1, 2), (8, 2, 1)])
def test_global_batch_size_derives_the_accumulation(devices, nodes, accumulation):
    plan = plan_batch(per_device_batch=16, devices=devices, num_nodes=nodes, accumulation=None,
                      global_batch_size=256)
    assert (plan.accumulation, plan.global_batch, plan.derived) == (accumulation, 256, True)
    # an explicit accumulation that agrees is fine
    assert plan_batch(per_device_batch=16, devices=devices, num_nodes=nodes, accumulation=accumulation,
                      global_batch_size=256) == plan


def test_plan_errors_name_the_numbers_and_keys():
    with pytest.raises(ConfigError) as err:  # 4 nodes x 8 GPUs x 16 = 512 > 256
        plan_batch(per_device_batch=16, devices=8, num_nodes=4, accumulation=None, global_batch_size=256)
    message = str(err.value)
    assert "\n" not in message
    assert "trainer.global_batch_size=256" in message and "16 x 32 = 512" in message
    assert "data.params.batch_size" in message and "data.params.batch_size=8" in message
    with pytest.raises(ConfigError, match="global_batch_size=96 is not a whole multiple of .* 16 x 4 = 64"):
        plan_batch(per_device_batch=16, devices=4, num_nodes=1, accumulation=None, global_batch_size=96)
    with pytest.raises(ConfigError) as err:
        plan_batch(per_device_batch=16, devices=8, num_nodes=2, accumulation=2, global_batch_size=256)
    assert "model.params.accumulate_grad_batches=2 disagrees with trainer.global_batch_size=256" in str(err.value)
    assert "256 / (16 x 16) = 1" in str(err.value)
    # the launcher started a different world than the config describes
    with pytest.raises(ConfigError, match=r"started 16 processes \(WORLD_SIZE\) but .* 8 x 1 = 8"):
        plan_batch(per_device_batch=16, devices=8, num_nodes=1, accumulation=None, global_batch_size=None,
                   world_size=16)


def test_launched_world_size_reads_the_environment():
    assert launched_world_size({}) is None
    assert launched_world_size({"WORLD_SIZE": "16"}) == 16
    with pytest.raises(ConfigError, match="WORLD_SIZE='x'"):
        launched_world_size({"WORLD_SIZE": "x"})


def test_printed_block():
    plan = BatchPlan(world_size=16, devices=8, num_nodes=2, per_device_batch=16, accumulation=1, global_batch=256,
                     derived=True)
    text = plan.describe(config_files=["/abs/configs/tokenizer/base.yaml"])
    assert text.splitlines() == [
        "batch plan:",
        "  world size        16 = 2 node(s) x 8 device(s)",
        "  per-device batch  16 (data.params.batch_size)",
        "  accumulation      1 (derived from trainer.global_batch_size)",
        "  global batch      256 = 16 x 16 x 1",
        "config: /abs/configs/tokenizer/base.yaml",
    ]


def test_recipes_fix_the_global_batch():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    for name, expected in [("tokenizer/GR_d64", 256), ("tokenizer/R", 256), ("tokenizer/G_d32", 128),
                           ("tokenizer/G_d64", 128), ("ar/GR_B", 256), ("ar/G_XL", 256)]:
        cfg = load_with_origins(configs / f"{name}.yaml").cfg
        assert cfg.trainer.global_batch_size == expected, name
        assert "accumulate_grad_batches" not in cfg.model.params, name  # derived, one source
        per_device = cfg.data.params.batch_size
        # 8 GPUs per node: the tokenizer recipes hold on 1 and 2 nodes as written (MergeAR's 32 per GPU
        # needs data.params.batch_size=16 on 2 nodes, which the error says)
        for nodes in (1, 2) if name.startswith("tokenizer/") else (1,):
            plan = plan_batch(per_device_batch=per_device, devices=8, num_nodes=nodes, accumulation=None,
                              global_batch_size=expected)
            assert plan.global_batch == expected and plan.accumulation * nodes * 8 * per_device == expected


def test_training_run_derives_prints_and_records_the_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = write_config(tmp_path, trainer={"max_steps": 1, "max_epochs": 1, "global_batch_size": 8},
                          params={"accumulate_grad_batches": None, "val_pictures": 0})
    # remove the explicit accumulation: the global batch derives it (8 = 4 x 1 x 2)
    text = config.read_text().replace("    accumulate_grad_batches: null\n", "")
    config.write_text(text)
    result = train([config], run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "  global batch      8 = 4 x 1 x 2" in out
    assert "  accumulation      2 (derived from trainer.global_batch_size)" in out
    assert f"config: {config.resolve()}" in out
    assert result.batch_plan.accumulation == 2
    info = yaml.safe_load((tmp_path / "run" / RUN_INFO_FILE).read_text())
    assert info["batch_plan"]["global_batch"] == 8 and info["config_files"] == [str(config.resolve())]
    saved = yaml.safe_load(result.config_path.read_text())
    assert saved["model"]["params"]["accumulate_grad_batches"] == 2  # config.yaml says what ran


def test_training_run_refuses_a_non_divisible_global_batch(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = write_config(tmp_path, trainer={"max_steps": 1, "global_batch_size": 6})
    with pytest.raises(ConfigError) as err:
        train([config], run_dir=tmp_path / "run")
    assert "\n" not in str(err.value) and "trainer.global_batch_size=6" in str(err.value)
    assert str(err.value).startswith(str(config.resolve())) or str(config.name) in str(err.value)


def test_training_run_refuses_a_launcher_world_that_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = write_config(tmp_path, trainer={"max_steps": 1})
    with pytest.raises(ConfigError, match=r"started 2 processes \(WORLD_SIZE\) but trainer.devices x "
                                          r"trainer.num_nodes = 1 x 1 = 1"):
        train([config], run_dir=tmp_path / "run")
