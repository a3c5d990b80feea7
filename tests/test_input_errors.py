"""Errors that say the real cause (issue #13 item 7): an image size that is not the tokenizer's, a
warmup longer than the run (clamped with one warning), and K candidates that do not fit L."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from _ar_training import write_codes
from _ar_training import write_config as write_ar_config
from _training import write_config

from mergevq.errors import ConfigError
from mergevq.tokenizer.model import MergeVQ, build_config
from mergevq.training.optim import LRSchedule, warmup_decay_scheduler
from mergevq.training.run import train

pytestmark = pytest.mark.usefixtures("private_cache")


# (a) image size vs the tokenizer's image_size


def test_wrong_image_size_names_both_sizes_not_k():
    model = MergeVQ(config=build_config(preset="tiny-GR", changes={}))
    with pytest.raises(ConfigError) as err:
        model.encode(torch.zeros(1, 3, 64, 64), 9)
    message = str(err.value)
    assert message.startswith("image size 64x64 but the tokenizer expects 32x32 (its image_size)")
    assert "eval.resolution" in message and "num_keep" not in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"image size 16x16 but the tokenizer expects 32x32"):
        model(torch.zeros(1, 3, 16, 16), 9)


def test_training_on_images_of_another_size_fails_first_with_the_size(tmp_path):
    config = write_config(tmp_path, trainer={"max_steps": 1})
    with pytest.raises(ConfigError, match=r"image size 16x16 but the tokenizer expects 32x32"):
        train([config], ["data.params.train.params.resolution=16", "data.params.validation.params.resolution=16"],
              run_dir=tmp_path / "run")


# (b) warmup longer than the run


def test_warmup_longer_than_the_run_is_clamped_with_one_warning(caplog):
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([p], lr=1.0)
    with caplog.at_level(logging.WARNING, logger="mergevq.training.optim"):
        scheduler = warmup_decay_scheduler(optimizer, schedule=LRSchedule(warmup_steps=50, decay="cosine"),
                                           total_steps=20)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["model.params.schedule.warmup_steps=50 is longer than the run's 20 optimizer steps: the "
                     "warmup is clamped to 20 steps"]
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([(s + 1) / 20 for s in range(20)])  # the whole run warms up to the peak
    with pytest.raises(ConfigError, match="total_steps >= 1"):
        LRSchedule(warmup_steps=5).fitted(0)


def test_mergear_smoke_run_with_the_recipe_warmup(tmp_path, caplog):
    codes = write_codes(tmp_path / "codes", count=8)
    config = write_ar_config(tmp_path, codes=codes, trainer={"max_steps": 3, "max_epochs": -1},
                             params={"schedule": {"warmup_steps": 50, "decay": "cosine", "total_steps": None,
                                                  "min_lr_ratio": 0.1}})
    with caplog.at_level(logging.WARNING, logger="mergevq.training.optim"):
        result = train([config], run_dir=tmp_path / "run")
    assert math.isfinite(result.metrics["train/loss"])
    assert [r.getMessage() for r in caplog.records if "warmup" in r.getMessage()] == [
        "model.params.schedule.warmup_steps=50 is longer than the run's 3 optimizer steps: the warmup is clamped "
        "to 3 steps"]


# (c) K candidates that do not fit L


@pytest.mark.parametrize(("changes", "expected"), [
    ({"k_candidates": [25, 36], "num_keep": 25}, r"k_candidates=\[25, 36\] for L=16 tokens \(4x4, image_size 32\): "
                                                 r"no candidate K fits in \[1, 16\]"),
    ({"k_candidates": [], "num_keep": 9}, r"k_candidates=\[\] for L=16 tokens .*no candidate K fits"),
    ({"image_size": 8}, r"k_candidates=\[4, 9, 16\] for L=1 tokens \(1x1, image_size 8\): no candidate K fits"),
])
def test_k_candidates_that_do_not_fit_l_are_one_line_errors(changes, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        build_config(preset="tiny-GR", changes=changes)
    assert "\n" not in str(err.value)


def test_unreachable_k_candidates_are_named():
    from mergevq.tokenizer.merge import reachable_counts

    config = build_config(preset="tiny-G", changes={})
    reachable = set(reachable_counts(num_tokens=config.num_tokens, depth=config.depth))
    missing = [k for k in range(1, config.num_tokens + 1) if k not in reachable]
    if not missing:
        pytest.skip("every K is reachable for this preset")
    bad = missing[-1]
    with pytest.raises(ConfigError, match=rf"not all are reachable .*unreachable: \[{bad}\]"):
        build_config(preset="tiny-G", changes={"k_candidates": sorted({*config.k_candidates, bad})})
    with pytest.raises(ConfigError, match=rf"none is reachable"):
        build_config(preset="tiny-G", changes={"k_candidates": [bad], "num_keep": bad})


