"""Stage 2 training (issue #6 item 5, "Training" bar): the optimiser's parameter groups and LR
schedule, the tiny MergeAR overfitting a small code set through ``mergevq.training.run.train``,
checkpoint / resume continuing the schedule exactly, the codes-vs-model check, and the demo config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _ar_training import GRID, NUM_CLASSES, write_codes, write_config

from mergevq.ar.model import build_config
from mergevq.config import load_with_origins
from mergevq.data.codes import CodesDataset
from mergevq.errors import ConfigError
from mergevq.training.ar_module import ARModule
from mergevq.training.checkpoint import list_checkpoints, load_checkpoint_file
from mergevq.training.optim import LRSchedule, build_adamw, warmup_decay_scheduler
from mergevq.training.run import train

pytestmark = pytest.mark.usefixtures("private_cache")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tiny_module(**params) -> ARModule:
    config = build_config(preset="tiny", changes={"grid": list(GRID), "num_classes": NUM_CLASSES})
    return ARModule(model=config, **params)


# --------------------------------------------------------------------------------------------------
# optimiser: weight-decay groups and the schedule


def test_weight_decay_only_on_matrices_and_embeddings():
    module = _tiny_module(weight_decay=0.05, betas=(0.9, 0.95))
    adamw = build_adamw(module, decay_names=module.decay_names, lr=1e-3, betas=module.betas,
                        weight_decay=module.weight_decay)
    assert adamw.defaults["betas"] == (0.9, 0.95)
    groups = {g["name"]: g for g in adamw.param_groups}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    params = dict(module.named_parameters())
    assert decay.isdisjoint(no_decay) and decay | no_decay == {id(p) for p in params.values()}
    for name, p in params.items():
        assert (id(p) in decay) == (p.ndim >= 2), name
    # the model really has both kinds: linear weights / embeddings, and RMSNorm gains
    assert any(n.startswith("model.token_embeddings") and id(p) in decay for n, p in params.items())
    assert any("norm" in n and id(p) in no_decay for n, p in params.items())


def test_schedule_values_in_optimizer_steps():
    warm = LRSchedule(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    assert [warm.factor(s, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm.factor(4, 14) == pytest.approx(1.0)
    assert warm.factor(9, 14) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert warm.factor(14, 14) == pytest.approx(0.1) and warm.factor(100, 14) == pytest.approx(0.1)
    linear = LRSchedule(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert [linear.factor(s, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert LRSchedule(warmup_steps=2, decay="constant").factor(50, 10) == 1.0
    # the torch scheduler, stepped once per optimizer step, follows factor() exactly
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = warmup_decay_scheduler(opt, schedule=warm, total_steps=14)
    seen = []
    for _ in range(16):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * warm.factor(s, 14) for s in range(16)])


@pytest.mark.parametrize(("values", "message"), [
    ({"decay": "exp"}, "decay must be one of"),
    ({"warmup": 3}, "unknown key(s) warmup"),
    ({"min_lr_ratio": 2}, "min_lr_ratio"),
])
def test_schedule_config_errors_are_one_line(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LRSchedule.from_mapping(values)


def test_module_rejects_bad_params():
    with pytest.raises(ConfigError, match="model.params.model must be a MergeAR config"):
        ARModule(model={"dim": 64})
    with pytest.raises(ConfigError, match="betas"):
        _tiny_module(betas=(0.9,))
    with pytest.raises(ConfigError, match="ema_decay"):
        _tiny_module(ema_decay=1.5)


def test_initial_weights_depend_only_on_the_seed():
    a = _tiny_module(seed=3)
    torch.rand(100)  # whatever used the global RNG in between
    b = _tiny_module(seed=3)
    c = _tiny_module(seed=4)
    wa, wb, wc = (m.model.class_embedding.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# --------------------------------------------------------------------------------------------------
# the bar: the tiny MergeAR overfits a small code set


def test_tiny_mergear_overfits_small_code_set(tmp_path):
    codes = write_codes(tmp_path / "codes", count=8)
    config = write_config(
        tmp_path, codes=codes, trainer={"max_steps": 30, "checkpoint_every_n_steps": 0, "keep_checkpoints": 1},
        params={"lr": 1.0e-2, "schedule": {"warmup_steps": 3, "decay": "cosine", "min_lr_ratio": 0.1}},
    )
    result = train([config], run_dir=tmp_path / "run")
    assert result.metrics["train/step"] == 29.0
    # no schedule.total_steps: the decay spans trainer.max_steps (the lr logged is the one step 29 used)
    schedule = LRSchedule(warmup_steps=3, decay="cosine", min_lr_ratio=0.1)
    assert result.metrics["train/lr"] == pytest.approx(1.0e-2 * schedule.factor(29, 30))
    from mergevq.training.ar_export import load_mergear

    model = load_mergear(tmp_path / "run")  # newest checkpoint, eval mode (no dropout)
    data = CodesDataset(root=str(codes))
    batch = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("indices", "label", "num_keep")}
    with torch.no_grad():
        out = model(batch["indices"], batch["label"], batch["num_keep"])
    uniform = [math.log(2**b) for b in model.config.sub_token_bits]  # 4.2 and 8.3 nats at the start
    losses = [float(s) for s in out.sub_losses]
    assert all(loss < 0.5 for loss in losses), (losses, uniform)
    # greedy decoding under teacher forcing reproduces the code set
    from mergevq.tokenizer.quantizer import indices_to_subtokens

    targets = indices_to_subtokens(batch["indices"], model.config.sub_token_bits)
    accuracy = torch.stack([lg.argmax(-1) == targets[..., s] for s, lg in enumerate(out.logits)]).float().mean()
    assert accuracy > 0.95


# --------------------------------------------------------------------------------------------------
# checkpoint / resume


def test_resume_continues_schedule_exactly(tmp_path):
    """6 steps in one go vs 3 steps + resume to 6 (the schedule length is pinned by total_steps, as the
    LRSchedule docstring asks for runs that are extended). One optimizer step per epoch (batch = the
    whole code set), so each checkpoint is an epoch-end one and the data order replays exactly."""
    codes = write_codes(tmp_path / "codes", count=8)
    schedule = {"warmup_steps": 2, "decay": "cosine", "total_steps": 6, "min_lr_ratio": 0.1}
    full_cfg = write_config(tmp_path / "a", codes=codes, params={"schedule": schedule, "ema_decay": 0.5})
    full = train([full_cfg], run_dir=tmp_path / "a" / "run")

    first_cfg = write_config(tmp_path / "b", codes=codes, trainer={"max_steps": 3},
                             params={"schedule": schedule, "ema_decay": 0.5})
    first = train([first_cfg], run_dir=tmp_path / "b" / "run")
    ckpt3 = load_checkpoint_file(first.last_checkpoint)
    assert ckpt3["global_step"] == 3
    (sched_state,) = ckpt3["lr_schedulers"]
    assert sched_state["last_epoch"] == 3
    lr3 = 3.0e-3 * LRSchedule(**schedule).factor(3, 6)
    assert ckpt3["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr3)

    resumed = train([full_cfg], run_dir=tmp_path / "b" / "run", resume="auto")
    assert resumed.last_checkpoint.name == full.last_checkpoint.name  # same step, same name
    a, b = load_checkpoint_file(full.last_checkpoint), load_checkpoint_file(resumed.last_checkpoint)
    assert a["global_step"] == b["global_step"] == 6
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 6
    for key in ("train/lr", "train/step"):
        assert resumed.metrics[key] == full.metrics[key], key
    # the loss of the last step (computed by the resumed run after the restore) is the same
    assert resumed.metrics["train/loss"] == pytest.approx(full.metrics["train/loss"], rel=1e-5, abs=1e-6)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in a["ema_state_dict"].items():
        torch.testing.assert_close(b["ema_state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    names = [p.name for p in list_checkpoints(tmp_path / "b" / "run" / "checkpoints")]
    assert "step000000003-epoch0002-end.ckpt" in names and names[-1] == "step000000006-epoch0005-end.ckpt"


# --------------------------------------------------------------------------------------------------
# the codes must fit the model; the shipped demo config trains


def test_codes_that_do_not_fit_the_model_are_a_one_line_error(tmp_path):
    codes = write_codes(tmp_path / "codes", count=8, grid=(2, 8))
    config = write_config(tmp_path, codes=codes, trainer={"max_steps": 3})
    with pytest.raises(ConfigError, match=r"grid=\[2, 8\] but the model has grid=\[4, 4\]") as err:
        train([config], run_dir=tmp_path / "run")
    assert "\n" not in str(err.value)


def test_demo_config_trains(tmp_path):
    codes = write_codes(tmp_path / "codes", count=16, grid=(8, 8), num_classes=10, flip=True)
    loaded = load_with_origins([CONFIGS / "demo" / "mergear.yaml"], [f"demo_codes.root={codes}"])
    assert loaded.select("model.params.model.params.preset") == "tiny"
    result = train([CONFIGS / "demo" / "mergear.yaml"],
                   [f"demo_codes.root={codes}", "trainer.max_steps=2", "trainer.progress_bar=false", "data.params.batch_size=8",
                    "model.params.schedule.warmup_steps=1"],
                   run_dir=tmp_path / "run")
    assert result.last_checkpoint is not None and result.metrics["train/step"] == 1.0
    assert math.isfinite(result.metrics["train/loss"])
