"""ImageDataModule loaders (0 and 2 workers) and the SkippedImagesReport callback."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from _data_images import write_bad_images, write_good_images

# mergevq first: importing it applies the torchvision shim that lightning's import needs.
from mergevq.data.datamodule import ImageDataModule  # isort: skip
import lightning.pytorch as pl  # isort: skip
from mergevq.data.skips import SkippedImagesReport
from mergevq.errors import ConfigError
from taming.data.folder import ImageFolder


@pytest.fixture()
def datasets(tmp_path):
    write_good_images(str(tmp_path / "train"))  # 7 readable
    write_bad_images(str(tmp_path / "train"))  # 2 unreadable
    write_good_images(str(tmp_path / "val"))
    write_bad_images(str(tmp_path / "val"))
    train = ImageFolder(root=str(tmp_path / "train"), size=32, views=True, view_size=28,
                        random_crop=True, flip=True)  # fmt: skip
    val = ImageFolder(root=str(tmp_path / "val"), size=32)
    return train, val


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_epoch_counts_skips(datasets, num_workers):
    train, val = datasets
    dm = ImageDataModule(train=train, validation=val, batch_size=3, val_batch_size=4,
                         num_workers=num_workers)  # fmt: skip
    total_skipped, total_seen = 0, 0
    for batch in dm.train_dataloader():  # 9 files, batch 3, drop_last: all 3 batches full
        total_skipped += batch["num_skipped"]
        if "image" in batch:
            total_seen += batch["image"].shape[0]
            assert batch["student_image"].shape[1:] == (3, 28, 28)
    assert total_skipped + total_seen == 9 and total_skipped == 2
    val_batches = list(dm.val_dataloader())
    assert len(val_batches) == 3  # 9 files, batch 4, last kept
    assert sum(b["num_skipped"] for b in val_batches) == 2
    assert sum(b["image"].shape[0] for b in val_batches if "image" in b) == 7
    assert "teacher_image" not in val_batches[0]


def test_construction_errors(datasets):
    train, _ = datasets
    with pytest.raises(ConfigError, match="at least one of train or validation"):
        ImageDataModule(batch_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        ImageDataModule(train=train, batch_size=0)
    dm = ImageDataModule(validation=train, batch_size=2)
    with pytest.raises(ConfigError, match="data.train is not set"):
        dm.train_dataloader()
    assert ImageDataModule(train=train, batch_size=2).val_dataloader() == []


def test_report_hooks_with_stub_trainer(caplog):
    report = SkippedImagesReport()
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce=lambda t, reduce_op: t * 2),  # pretend: 2 equal ranks
        is_global_zero=True,
        sanity_checking=False,
    )
    module = SimpleNamespace(device=torch.device("cpu"))
    report.on_train_batch_end(trainer, module, None, {"num_skipped": 0, "skipped_paths": []}, 0)
    for i, paths in enumerate([["a.jpg", "b.png"], ["c.jpg"]], start=1):
        batch = {"num_skipped": len(paths), "skipped_paths": paths}
        report.on_train_batch_end(trainer, module, None, batch, i)
    with caplog.at_level(logging.WARNING, logger="mergevq.data.skips"):
        report.on_train_epoch_end(trainer, module)
    assert report.last_report["train"] == 6
    assert "skipped 6 unreadable images this train epoch (e.g. a.jpg)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mergevq.data.skips"):
        report.on_train_epoch_end(trainer, module)  # counters were reset
    assert report.last_report["train"] == 0 and caplog.text == ""


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        if "image" not in batch:  # every image of this batch was unreadable
            return None
        return self.layer(batch["image"].mean(dim=(2, 3))).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        if "image" in batch:
            self.log("val_loss", self.layer(batch["image"].mean(dim=(2, 3))).mean(),
                     batch_size=batch["image"].shape[0])  # fmt: skip

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_report_in_a_real_fit(datasets, caplog):
    train, val = datasets
    # batch_size=1: each unreadable file is a batch with no images, which the step must skip.
    dm = ImageDataModule(train=train, validation=val, batch_size=1, val_batch_size=4,
                         num_workers=0, drop_last=False)  # fmt: skip
    report = SkippedImagesReport()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[report],
        num_sanity_val_steps=0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mergevq.data.skips"):
        trainer.fit(_Tiny(), datamodule=dm)
    assert report.last_report["train"] == 2
    assert report.last_report["validation"] == 2
    assert "this validation epoch" in caplog.text
