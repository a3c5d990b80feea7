"""`mergevq linear-probe` (issue #5 item 3): top-k counting, LARS, the features of a frozen encoder,
the probe learning a separable problem with warmup + cosine, the encoder never changing, and the
command end to end on a tiny exported tokenizer (demo classes and a class-folder data set)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _data_images import write_jpeg
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mergevq.cli import main
from mergevq.errors import ConfigError
from mergevq.inference.probe_features import ProbeEncoder, extract_features
from mergevq.metrics.probe import build_probe_optimizer, topk_accuracy, topk_correct
from mergevq.outputs import check_output_file
from mergevq.tokenizer.model import MergeVQ, build_config
from mergevq.training.probe_module import (
    LinearHead,
    LinearProbeModule,
    ProbeSettings,
    evaluate_head,
    fit_linear_probe,
)


@pytest.fixture(scope="module")
def tokenizer() -> MergeVQ:
    torch.manual_seed(0)
    return MergeVQ(config=build_config(preset="tiny-R")).eval()  # 32 px, L = 64, D = 64


class _Images(Dataset):
    """Labelled 32 px images in [-1, 1]: class c is a flat colour plus noise."""

    def __init__(self, n: int, num_classes: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_classes
        base = torch.linspace(-0.8, 0.8, num_classes)[self.labels].view(n, 1, 1, 1)
        self.images = (base + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "class_label": self.labels[i]}


def _trainer(epochs: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                      callbacks=list(callbacks))


# --------------------------------------------------------------------------------------------------
# top-k and LARS


def test_topk_on_known_logits():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # label 2: rank 5 (6, 5, 4, 3, 2) -> top-5, not top-1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # label 1: rank 6 -> neither
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.2],  # label 6: rank 2 -> top-5
    ])
    labels = torch.tensor([0, 2, 1, 6])
    assert topk_correct(logits, labels, ks=(1, 2, 5, 7)).tolist() == [1, 2, 3, 4]
    acc = topk_accuracy(logits, labels)
    assert (acc.top1, acc.top5, acc.count) == (25.0, 75.0, 4)
    # fewer classes than k: every label is among all C classes
    assert topk_accuracy(logits[:, :3], torch.tensor([2, 0, 1, 1])).top5 == 100.0


def test_lars_trust_ratio_scales_matrices_not_vectors():
    head = nn.Linear(4, 3)
    lr, trust = 0.5, 0.01
    steps = []
    for scale in (1.0, 100.0):  # LARS: the matrix step does not depend on the gradient's scale
        torch.manual_seed(0)
        head.reset_parameters()
        w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
        opt = build_probe_optimizer(head.named_parameters(), name="lars", lr=lr, momentum=0.0, trust_coeff=trust)
        head.weight.grad = torch.randn(3, 4) * scale
        head.bias.grad = torch.randn(3) * scale
        opt.step()
        dw, db = head.weight.detach() - w0, head.bias.detach() - b0
        # matrix: step = lr * trust * |w| / |g| * g, so |step| = lr * trust * |w|
        assert dw.norm().item() == pytest.approx(lr * trust * w0.norm().item(), rel=1e-4)
        assert torch.allclose(dw / dw.norm(), -head.weight.grad / head.weight.grad.norm(), atol=1e-4)
        # bias: plain SGD step
        assert torch.allclose(db, -lr * head.bias.grad, atol=1e-6 * scale)
        steps.append(dw)
    assert torch.allclose(steps[0], steps[1], atol=1e-6)
    # SGD with weight decay: decays the matrix only
    head.weight.data.fill_(1.0)
    head.bias.data.fill_(1.0)
    opt = build_probe_optimizer(head.named_parameters(), name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5)
    head.weight.grad, head.bias.grad = torch.zeros(3, 4), torch.zeros(3)
    opt.step()
    assert torch.allclose(head.weight, torch.full((3, 4), 0.95)) and torch.allclose(head.bias, torch.ones(3))


# --------------------------------------------------------------------------------------------------
# features


def test_cls_and_mean_features_differ_and_match_the_encoder(tokenizer):
    x = _Images(4).images
    out = tokenizer.encoder(x, num_keep=16)
    cls = ProbeEncoder(tokenizer=tokenizer, num_keep=16, feature="cls")(x)
    mean = ProbeEncoder(tokenizer=tokenizer, num_keep=16, feature="mean")(x)
    assert cls.shape == mean.shape == (4, tokenizer.config.dim)
    assert torch.allclose(cls, out.cls) and torch.allclose(mean, out.tokens.mean(dim=1))  # tokens (B, K=16, D)
    assert not torch.allclose(cls, mean, atol=1e-3)
    # K changes the mean of the kept tokens
    assert not torch.allclose(mean, ProbeEncoder(tokenizer=tokenizer, num_keep=9, feature="mean")(x), atol=1e-4)
    assert ProbeEncoder(tokenizer=tokenizer).num_keep == tokenizer.config.num_keep
    for bad in (0, 65):
        with pytest.raises(ConfigError, match=r"num_keep=.*\[1, L=64\]"):
            ProbeEncoder(tokenizer=tokenizer, num_keep=bad)
    features = extract_features(ProbeEncoder(tokenizer=tokenizer, feature="mean"), _Images(5), batch_size=2)
    assert features.features.shape == (5, 64) and features.labels.tolist() == [0, 1, 0, 1, 0]


def test_bad_feature_or_optimizer_is_a_one_line_error(tokenizer):
    for kwargs, key in (({"feature": "pool"}, "probe.feature"), ({"optimizer": "adam"}, "probe.optimizer"),
                        ({"warmup_epochs": 5, "epochs": 5}, "probe.warmup_epochs")):
        with pytest.raises(ConfigError, match=key) as info:
            ProbeSettings(**kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cls, mean"):
        ProbeEncoder(tokenizer=tokenizer, feature="pooled")


# --------------------------------------------------------------------------------------------------
# training


class _LR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_probe_learns_a_separable_problem_with_warmup_and_cosine():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    labels = torch.arange(256) % 4
    features = centres[labels] + torch.randn(256, 16, generator=g) + 5.0  # offset: BatchNorm removes it
    settings = ProbeSettings(epochs=5, batch_size=64, optimizer="sgd", base_lr=0.4, warmup_epochs=1,
                             accelerator="cpu")
    head = LinearHead(dim=16, num_classes=4)
    assert evaluate_head(head, features, labels).top1 < 60
    lrs = _LR()
    _trainer(settings.epochs, [lrs]).fit(
        LinearProbeModule(head=head, settings=settings),
        DataLoader(TensorDataset(features, labels), batch_size=64, shuffle=True, drop_last=True),
    )
    assert evaluate_head(head, features, labels).top1 > 97
    # 20 steps: 4 of linear warmup to lr = 0.4 * 64 / 256 = 0.1, then a cosine to 0
    peak = settings.lr
    assert len(lrs.lrs) == 20 and peak == pytest.approx(0.1)
    assert lrs.lrs[:4] == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak])
    assert lrs.lrs[10] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 6 / 16)))
    assert lrs.lrs[4] == peak and all(a > b for a, b in zip(lrs.lrs[4:], lrs.lrs[5:]))


def test_encoder_is_frozen_and_unchanged_when_encoding_every_batch(tokenizer):
    before = {k: v.clone() for k, v in tokenizer.state_dict().items()}
    settings = ProbeSettings(epochs=2, batch_size=8, optimizer="lars", base_lr=0.1, warmup_epochs=0.5,
                             precompute=False, num_keep=9, feature="mean", accelerator="cpu", progress_bar=False)
    result = fit_linear_probe(tokenizer=tokenizer, train=_Images(16), validation=_Images(8, seed=1),
                              settings=settings)
    after = tokenizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not tokenizer.training and not any(p.requires_grad for p in tokenizer.parameters())
    assert result.optimizer_steps == 4 and result.num_keep == 9 and result.feature == "mean"
    assert result.feature_dim == 64 and result.num_classes == 2 and len(result.val_top1_per_epoch) == 2
    assert 0 <= result.top1 <= result.top5 == 100.0  # 2 classes: top-5 holds every label
    # the encoder is held outside the module: never in its state dict or optimiser
    module = LinearProbeModule(head=LinearHead(dim=64, num_classes=2), settings=settings,
                               encoder=ProbeEncoder(tokenizer=tokenizer))
    assert set(module.state_dict()) == {"head.norm.running_mean", "head.norm.running_var",
                                        "head.norm.num_batches_tracked", "head.linear.weight", "head.linear.bias"}


# --------------------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory) -> Path:
    return tokenizer.save_pretrained(tmp_path_factory.mktemp("tok") / "tokenizer")


def test_cli_demo_end_to_end(exported, tmp_path, capsys, private_cache):
    out = tmp_path / "probe.json"
    rc = main(["linear-probe", str(exported), "probe.epochs=2", "probe.batch_size=20", "probe.warmup_epochs=1",
               "probe.progress_bar=false", "demo_data.train_per_photo=4", "demo_data.val_per_photo=2",
               "--demo", "--num-keep", "25", "--feature", "mean", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert f"top-1: {record['top1']:.2f} %" in printed and f"top-5: {record['top5']:.2f} %" in printed
    assert record["num_keep"] == 25 and record["feature"] == "mean" and record["num_classes"] == 10
    assert record["num_train"] == 40 and record["num_val"] == 20 and record["optimizer_steps"] == 4
    assert 0 <= record["top1"] <= record["top5"] <= 100
    assert record["settings"]["optimizer"] == "sgd" and record["settings"]["image_size"] == 32
    assert record["command"] == "linear-probe"  # so that a re-run may replace it
    assert check_output_file(out, command="linear-probe") == out
    # --demo = --config probe/demo data=demo: the composed files, absolute, in composition order
    names = [Path(f).relative_to(Path(__file__).resolve().parents[1] / "configs").as_posix() for f in record["configs"]]
    assert names == ["data/demo.yaml", "probe/linear.yaml", "probe/demo.yaml"]
    assert [f"config: {f}" for f in record["configs"]] == [l for l in printed.splitlines() if l.startswith("config: ")]


def test_cli_refuses_a_folder_or_a_foreign_file_before_any_work(tmp_path, capsys):
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"top1": 99.0}')
    for target, message in ((theirs, "was not written by mergevq linear-probe"),
                            (tmp_path, "expected a file name, but it is a folder")):
        # the tokenizer does not exist: the refusal comes first
        assert main(["linear-probe", str(tmp_path / "no-tokenizer"), "--demo", "--out", str(target)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert theirs.read_text() == '{"top1": 99.0}' and sorted(p.name for p in tmp_path.iterdir()) == ["theirs.json"]


def test_cli_class_folders_and_one_line_errors(exported, tmp_path, capsys):
    root = tmp_path / "data"
    for split, count in (("train", 4), ("val", 2)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(count):
                write_jpeg(str(root / split / name / f"{i}.jpg"), size=40, seed=10 * c + i)
    out = tmp_path / "folder.json"
    common = ["probe.epochs=2", "probe.batch_size=4", "probe.warmup_epochs=0", "probe.accelerator=cpu",
              "probe.progress_bar=false", "data.params.num_workers=0"]
    assert main(["linear-probe", str(exported), *common, "--folder", str(root), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["num_classes"] == 2 and record["num_train"] == 8 and record["num_val"] == 4
    capsys.readouterr()
    for flags, expected in ((["--feature", "pool"], "probe.feature must be one of cls, mean"),
                            (["--num-keep", "65"], "num_keep=65")):
        assert main(["linear-probe", str(exported), *common, "--folder", str(root), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err
