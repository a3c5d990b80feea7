"""What a config we did not get from the user may build (DESIGN §8 "Trust").

A config read from a checkpoint (``mergevq_config``), a run folder (``config.yaml``) or an export folder
was written by somebody else: it may name only the builders below, exact dotted names, checked before
anything is imported (``mergevq.config.instantiate(..., allowed=TRUSTED_TARGETS)``). YAML the user passes
on the command line keeps full ``target`` freedom. Add a name here when a shipped config or a
``mergevq train`` run starts using a new builder.
"""

from __future__ import annotations

__all__ = ["AR_MODULE", "TOKENIZER_MODULE", "TRUSTED_TARGETS"]

TOKENIZER_MODULE = "mergevq.training.tokenizer_module.TokenizerModule"
"""The Stage 1 training module (``model.target`` of a tokenizer run)."""

AR_MODULE = "mergevq.training.ar_module.ARModule"
"""The Stage 2 training module (``model.target`` of a MergeAR run)."""

TRUSTED_TARGETS: frozenset[str] = frozenset({
    # training modules
    TOKENIZER_MODULE,
    AR_MODULE,
    # architecture configs (plain dataclasses)
    "mergevq.tokenizer.model.build_config",
    "mergevq.ar.model.build_config",
    # Stage 1 parts: the discriminator and the frozen DINOv2 teacher (reads a local folder)
    "taming.modules.discriminator.patchgan.PatchGANDiscriminator",
    "mergevq.tokenizer.alignment.build_teacher",
    # data modules and data sets
    "mergevq.data.datamodule.ImageDataModule",
    "mergevq.data.codes.CodesDataModule",
    "mergevq.data.codes.CodesDataset",
    "mergevq.data.demo.DemoImages",
    "taming.data.folder.ImageFolder",
    "taming.data.imagenet.ImageNetTrain",
    "taming.data.imagenet.ImageNetValidation",
})
