"""Stage 1 training of the MergeVQ tokenizer as a LightningModule (DESIGN §4 "Losses",
"Optimisation"; issue #4).

One training step (manual optimisation, ``accumulate_grad_batches`` micro-batches per step):

1. K = ``KSampler.sample(train_steps)``: one draw per optimizer step, shared by its micro-batches and
   identical on every rank (it depends only on the run seed and the step counter, which is
   checkpointed), so a resumed run repeats the K sequence of an uninterrupted one.
2. :meth:`TokenizerModule.generator_backward` (written once, used for every micro-batch): the
   discriminator's parameters are frozen (``requires_grad=False``) for the whole generator forward
   and backward, so the adversarial gradient reaches the reconstruction but never the
   discriminator, with or without accumulation (tested).
3. :meth:`TokenizerModule.discriminator_backward` (written once): the tokenizer's parameters are
   frozen and the reconstruction is detached; hinge loss + LeCAM.
4. At the last micro-batch of a step (or of the epoch): optional grad-norm clipping, then both
   optimizers step and zero their gradients, unless a loss of the step was non-finite: then both
   updates are skipped with a warning naming the step, and after ``max_bad_steps`` such steps in a
   row training stops with :class:`~mergevq.errors.TrainingError`.

Counters (Python ints, checkpointed under ``checkpoint["mergevq_train_state"]``):
``train_steps`` = optimizer steps taken or skipped (the K-sampler step, the checkpoint cadence and
``trainer.max_steps`` count these); ``generator_updates`` = generator steps actually applied (the EMA
follows these); ``bad_steps`` = consecutive skipped steps. Lightning's own ``trainer.global_step``
counts every ``optimizer.step()`` of both optimizers (about 2x ``train_steps``); it is not used here.

The torch RNG state is checkpointed too, so resuming from an end-of-epoch checkpoint replays the same
data order and drop-path draws. (A mid-epoch checkpoint resumes with the same step counters, K
sequence, LR and optimizer state, but the interrupted epoch's remaining batches come from a fresh
shuffle: the DataLoader is not resumable.)

The teacher and the LPIPS network are frozen and held outside the module's parameters and state
dict (``Teacher`` / ``FrozenHolder``): they are never in a checkpoint, an optimizer or DDP's buckets.

Speed (issue #14, :mod:`mergevq.training.speed`): ``compile`` and ``channels_last`` choose how the
step runs, announced in one log line at fit start. Nothing inside a micro-step reads a tensor on the
host (tests/test_train_speed.py): the losses are logged as tensors (Lightning converts them when it
writes), and the only host read of a step is the finiteness decision at the optimizer-step boundary
(``_window_finite``).
Terms whose weight is 0 are not computed (the learned recovery and the [CLS] head are skipped when
their losses are off). Both Adams are the fused single-kernel implementation (not under 16-mixed).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from mergevq.errors import ConfigError, TrainingError
from mergevq.metrics.recon import psnr_per_image
from mergevq.tokenizer.alignment import Teacher
from mergevq.tokenizer.init import EncoderInit, init_encoder_from_file
from mergevq.tokenizer.merge import KSampler
from mergevq.tokenizer.model import MergeVQ, MergeVQConfig, MergeVQOutput
from mergevq.tokenizer.recovery import assignment_accuracy
from mergevq.training.losses import DiscriminatorLosses, GeneratorLosses, LossWeights, PerceptualSettings
from mergevq.training.speed import CompiledOrEager, StepSpeed, as_layout, check_settings, resolve_speed
from taming.modules.losses.alignment import alignment_kl
from taming.modules.losses.gan import hinge_d_loss, non_saturating_g_loss
from taming.modules.losses.lecam import LeCAMRegularizer
from taming.modules.losses.perceptual import PerceptualLoss

__all__ = ["RNG_STATE_KEY", "TRAIN_STATE_KEY", "TokenizerModule", "batch_code_usage", "frozen"]

log = logging.getLogger(__name__)

TRAIN_STATE_KEY = "mergevq_train_state"
RNG_STATE_KEY = "mergevq_rng_state"


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter of ``module`` inside the block and restore each
    parameter's own flag afterwards (also on an exception)."""
    params = list(module.parameters())
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states):
            p.requires_grad_(state)


def batch_code_usage(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Distinct codes among ``indices`` (any shape) divided by their number, as a float tensor.

    A fixed-size scatter instead of ``torch.unique``, so it does not synchronise with the device."""
    flat = indices.reshape(-1)
    seen = torch.zeros(codebook_size, dtype=torch.float32, device=flat.device)
    seen.index_fill_(0, flat, 1.0)
    return seen.sum() / max(flat.numel(), 1)


def _check_number(name: str, value: Any, *, low: float, integer: bool = False, inclusive: bool = True) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (value < low if inclusive else value <= low):
        kind = "an int" if integer else "a number"
        relation = ">=" if inclusive else ">"
        raise ConfigError(f"model.params.{name} must be {kind} {relation} {low}, got {value!r}")


class TokenizerModule(pl.LightningModule):
    """Trains a :class:`MergeVQ` tokenizer with a PatchGAN discriminator (manual optimisation).

    Args (the ``model.params`` section of a Stage 1 config):
        tokenizer: the architecture (``build_config`` node).
        discriminator: a built discriminator, ``(B, 3, H, W) -> logits`` (PatchGAN node).
        teacher: frozen alignment teacher, or None: then the alignment loss is off (its weight is
            ignored) and batches need no ``teacher_image`` / ``student_image``.
        perceptual: ``{net, weights_path, random_init}`` for ``mergevq.pretrained.load_lpips``.
        loss_weights: weights of the terms (:class:`LossWeights`); missing keys keep the defaults.
        disc_start_step: first training step with the GAN term and discriminator updates.
        align_temperature: T of the alignment KL.
        k_std, k_floor: the K sampler's weights over the candidate positions i,
            exp(−(i − i_nominal)² / (2·k_std²)) + k_floor, normalised (the authors' 0.5 and 0.05:
            :class:`~mergevq.tokenizer.merge.KSampler`).
        encoder_init: ``{source, path}`` of a local DINOv2 checkpoint, or None (the ViT starts from
            its random initialisation). When set, the encoder's ``cls_token`` and blocks are
            initialised from it by element selection (:mod:`mergevq.tokenizer.init`) once, when the
            module is built; a resumed run then loads its checkpoint over them. A missing path is a
            one-line :class:`~mergevq.errors.WeightsError`.
        lr, disc_lr, betas, weight_decay: Adam for the generator and the discriminator.
        lr_drop_epochs, lr_drop_factor: both learning rates are multiplied by the factor at the end of
            each listed epoch count (epochs are 0-based: ``[200]`` drops after 200 epochs).
        accumulate_grad_batches: micro-batches per optimizer step, both optimizers.
        grad_clip: max gradient norm for both networks, or None.
        ema_decay: decay of the generator EMA (read by ``mergevq.training.run`` to build the
            :class:`~mergevq.training.callbacks.EMACallback`).
        max_bad_steps: consecutive skipped (non-finite) steps before training stops with an error.
        val_pictures: images in the pictures logged at every validation (reconstructions at K = L,
            nominal and smallest K, and the merge groups: :mod:`mergevq.training.pictures`); 0: none.
        seed: the run seed (``run.seed``; supplied by the program, not set in ``model.params``): seeds
            the K sampler.
        compile: ``auto`` (compile on CUDA only), ``on`` or ``off``: ``torch.compile`` of the
            tokenizer and discriminator forward/backward (:mod:`mergevq.training.speed`).
        channels_last: run the CNN stem, the decoder's CNN and the discriminator on channels_last images.
    """

    def __init__(
        self,
        *,
        tokenizer: MergeVQConfig,
        discriminator: nn.Module,
        teacher: Teacher | None = None,
        perceptual: Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        disc_start_step: int = 0,
        align_temperature: float = 4.0,
        k_std: float = 0.5,
        k_floor: float = 0.05,
        encoder_init: Mapping[str, Any] | None = None,
        lr: float = 1.0e-4,
        disc_lr: float = 1.0e-4,
        betas: Sequence[float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        lr_drop_epochs: Sequence[int] = (),
        lr_drop_factor: float = 0.1,
        accumulate_grad_batches: int = 1,
        grad_clip: float | None = None,
        ema_decay: float = 0.999,
        max_bad_steps: int = 5,
        val_pictures: int = 8,
        seed: int = 0,
        compile: str = "auto",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if not isinstance(tokenizer, MergeVQConfig):
            raise ConfigError(
                f"model.params.tokenizer must be a MergeVQ config node (target: mergevq.tokenizer.model.build_config), "
                f"got {type(tokenizer).__name__}"
            )
        if not isinstance(discriminator, nn.Module):
            raise ConfigError(f"model.params.discriminator must build an nn.Module, got {type(discriminator).__name__}")
        if teacher is not None and not isinstance(teacher, Teacher):
            raise ConfigError(
                "model.params.teacher must be null or a teacher node (target: mergevq.tokenizer.alignment.build_teacher)"
            )
        _check_number("disc_start_step", disc_start_step, low=0, integer=True)
        _check_number("align_temperature", align_temperature, low=0, inclusive=False)
        _check_number("k_std", k_std, low=0, inclusive=False)
        _check_number("k_floor", k_floor, low=0)
        _check_number("lr", lr, low=0, inclusive=False)
        _check_number("disc_lr", disc_lr, low=0, inclusive=False)
        _check_number("weight_decay", weight_decay, low=0)
        _check_number("lr_drop_factor", lr_drop_factor, low=0, inclusive=False)
        _check_number("accumulate_grad_batches", accumulate_grad_batches, low=1, integer=True)
        _check_number("max_bad_steps", max_bad_steps, low=1, integer=True)
        _check_number("val_pictures", val_pictures, low=0, integer=True)
        _check_number("seed", seed, low=0, integer=True)
        if grad_clip is not None:
            _check_number("grad_clip", grad_clip, low=0, inclusive=False)
        check_settings(compile, channels_last)
        if not (isinstance(ema_decay, (int, float)) and not isinstance(ema_decay, bool) and 0 <= ema_decay < 1):
            raise ConfigError(f"model.params.ema_decay must be a number in [0, 1), got {ema_decay!r}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"model.params.betas must be two numbers in [0, 1), got {list(betas)}")
        drops = [int(e) for e in lr_drop_epochs]
        if any(e < 1 for e in drops) or drops != sorted(set(drops)):
            raise ConfigError(f"model.params.lr_drop_epochs must be increasing epoch counts >= 1, got {list(lr_drop_epochs)}")

        self.weights = LossWeights.from_mapping(loss_weights)
        perceptual_settings = PerceptualSettings.from_mapping(perceptual)
        init_settings = None if encoder_init is None else EncoderInit.from_mapping(encoder_init)
        if teacher is not None and tokenizer.cls_dim != teacher.dim:
            raise ConfigError(
                f"the teacher's feature width is {teacher.dim} but the tokenizer's [CLS] head gives "
                f"cls_dim={tokenizer.cls_dim}; set model.params.tokenizer.params.changes.cls_dim={teacher.dim}"
            )
        if teacher is not None and tokenizer.cls_dim == 0:
            raise ConfigError("model.params.teacher is set but the tokenizer has no [CLS] head (cls_dim=0)")

        self.tokenizer = MergeVQ(config=tokenizer)
        if init_settings is not None:
            report = init_encoder_from_file(self.tokenizer.encoder, init_settings)
            rank_zero_info(f"{report.summary()} [{init_settings.path}]")
        self.discriminator = discriminator
        self.lecam = LeCAMRegularizer()
        self.teacher = teacher
        from mergevq.pretrained import load_lpips

        self.perceptual = PerceptualLoss(
            model=load_lpips(
                perceptual_settings.net, path=perceptual_settings.weights_path,
                random_init=perceptual_settings.random_init,
            )
        )
        self.sampler = KSampler(
            candidates=tokenizer.k_candidates, nominal=tokenizer.num_keep, std=float(k_std), floor=float(k_floor),
            seed=seed,
        )
        self.disc_start_step = disc_start_step
        self.align_temperature = float(align_temperature)
        self.lr, self.disc_lr, self.betas, self.weight_decay = float(lr), float(disc_lr), betas, float(weight_decay)
        self.lr_drop_epochs, self.lr_drop_factor = drops, float(lr_drop_factor)
        self.accumulate_grad_batches = accumulate_grad_batches
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.ema_decay = float(ema_decay)
        self.max_bad_steps = max_bad_steps
        self.val_pictures = val_pictures
        self.seed = seed
        self.compile_setting = compile
        self.channels_last = channels_last
        self.tokenizer.set_channels_last(channels_last)
        if channels_last:
            self.discriminator.to(memory_format=torch.channels_last)  # its conv weights, as the tokenizer's
        # built by prepare_step (fit start, or the first micro-step outside a Trainer); plain
        # attributes, not submodules: the compiled wrappers never enter the state dict
        self._speed: StepSpeed | None = None
        self._tokenizer_call: CompiledOrEager | None = None
        self._discriminator_call: CompiledOrEager | None = None

        # counters (checkpointed, see the module docstring)
        self.train_steps = 0
        self.generator_updates = 0
        self.bad_steps = 0
        # finiteness of the current accumulation window: 0-d bool tensors, read once per step
        self._window_ok: torch.Tensor | None = None
        if teacher is None and self.weights.align > 0:
            log.info("model.params.teacher is null: the global alignment loss is off (loss_weights.align ignored)")

    # Read by mergevq.training.run for DDP's find_unused_parameters. Every trainable parameter gets a
    # gradient in each training step (tests/test_unused_parameters.py), but not in each backward: the
    # generator backward runs with the discriminator frozen and the discriminator backward with the
    # tokenizer frozen, two backwards per DDP forward over disjoint parameter sets. DDP's reducer would
    # wait for the other network's gradients after the first one; the unused-parameter search is what
    # lets each backward reduce only the network it reached.
    has_unused_parameters = True

    def configure_callbacks(self) -> list[pl.Callback]:
        from mergevq.training.pictures import ValidationPictures

        return [ValidationPictures(num_images=self.val_pictures)] if self.val_pictures > 0 else []

    # ---------------------------------------------------------------------------------------------
    # optimisers

    def configure_optimizers(self) -> Any:
        # fused: one multi-tensor kernel per step (CPU and CUDA) instead of a Python loop of ~10 ops per
        # parameter tensor; the for-loop Adam took ~15 % of a CPU GR-d64 step. Not under 16-mixed, whose
        # loss scaler Lightning must unscale before clipping, which it refuses for fused optimizers.
        fused = self._grad_scaler() is None
        opt_g = torch.optim.Adam(self.tokenizer.parameters(), lr=self.lr, betas=self.betas,
                                 weight_decay=self.weight_decay, fused=fused)
        opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.disc_lr, betas=self.betas, weight_decay=self.weight_decay,
            fused=fused,
        )
        # Stepped by hand at every epoch end (manual optimisation); Lightning saves/restores their state.
        schedulers = [
            torch.optim.lr_scheduler.MultiStepLR(opt, milestones=self.lr_drop_epochs, gamma=self.lr_drop_factor)
            for opt in (opt_g, opt_d)
        ]
        return [opt_g, opt_d], schedulers

    # ---------------------------------------------------------------------------------------------
    # how the step runs (mergevq.training.speed)

    def prepare_step(self, device: torch.device | None = None) -> StepSpeed:
        """Resolve ``compile`` / ``channels_last`` for ``device`` (default: the module's) and build
        the compiled (or eager) callables once; returns the settings in force."""
        if self._speed is None:
            speed = resolve_speed(compile=self.compile_setting, channels_last=self.channels_last,
                                  device=self.device if device is None else device)
            self._tokenizer_call = CompiledOrEager(self.tokenizer, name="tokenizer", enabled=speed.compile)
            self._discriminator_call = CompiledOrEager(self.discriminator, name="discriminator",
                                                       enabled=speed.compile)
            self._speed = speed
        return self._speed

    @property
    def step_speed(self) -> StepSpeed:
        """The settings in force, with a compile fallback taken into account."""
        speed = self.prepare_step()
        compiled = self._tokenizer_call is not None and self._tokenizer_call.active
        return StepSpeed(compile=compiled, channels_last=speed.channels_last)

    def on_fit_start(self) -> None:
        rank_zero_info(self.prepare_step().describe())

    def _discriminate(self, images: torch.Tensor) -> torch.Tensor:
        speed = self.prepare_step(images.device)
        return self._discriminator_call(as_layout(images, speed.memory_format))

    # ---------------------------------------------------------------------------------------------
    # the two micro-steps, each written once

    def _backward(self, loss: torch.Tensor) -> None:
        # Through Lightning when attached (precision scaling, DDP's reducer); plain otherwise (unit tests).
        if self._trainer is None:
            loss.backward()
        else:
            self.manual_backward(loss)

    def _gan_active(self) -> bool:
        return self.train_steps >= self.disc_start_step

    def _views(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.teacher is None:
            return None, None
        missing = [k for k in ("teacher_image", "student_image") if k not in batch]
        if missing:
            raise ConfigError(
                f"model.params.teacher is set but the training batches have no {' / '.join(missing)}: "
                "set views: true on the training dataset (data.params.train.params.views)"
            )
        return batch["teacher_image"], batch["student_image"]

    def generator_losses(self, batch: Mapping[str, Any], num_keep: int) -> GeneratorLosses:
        """Forward the tokenizer on ``batch["image"]`` keeping ``num_keep`` tokens and compute every
        generator loss term (the discriminator is only read; the caller freezes it)."""
        x = batch["image"]  # (B, 3, H, W) in [-1, 1]
        teacher_view, student_view = self._views(batch)
        w = self.weights
        self.prepare_step(x.device)
        out: MergeVQOutput = self._tokenizer_call(
            x, num_keep, student_view=student_view, with_recovery=w.recovery > 0,
            with_cls=teacher_view is not None and w.align > 0,
        )
        rec = out.reconstruction  # (B, 3, H, W)
        zero = x.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            l1 = (rec.float() - x.float()).abs().mean()
        perceptual = self.perceptual(rec, x) if w.perceptual > 0 else zero
        gan = non_saturating_g_loss(self._discriminate(rec)) if w.gan > 0 and self._gan_active() else zero
        align = zero
        if teacher_view is not None and out.cls_feature is not None:
            align = alignment_kl(out.cls_feature, self.teacher(teacher_view), temperature=self.align_temperature)
        recovery = accuracy = zero
        if out.recovery_logits is not None:
            with torch.autocast(device_type=x.device.type, enabled=False):
                # (B, L, K) -> (B, K, L) against the true assignment (B, L)
                recovery = F.cross_entropy(out.recovery_logits.float().transpose(1, 2), out.encoded.assign)
            accuracy = assignment_accuracy(out.recovery_logits.detach(), out.encoded.assign)
        enc = out.encoded
        total = (
            w.l1 * l1 + w.perceptual * perceptual + w.gan * gan + w.entropy * enc.entropy_loss.float()
            + w.commit * enc.commit_loss.float() + w.align * align + w.recovery * recovery
        )
        return GeneratorLosses(
            total=total, l1=l1, perceptual=perceptual, gan=gan, entropy=enc.entropy_loss, commit=enc.commit_loss,
            align=align, recovery=recovery, recovery_accuracy=accuracy,
            usage=batch_code_usage(enc.indices.detach(), self.tokenizer.quantizer.codebook_size),
            per_sample_entropy=enc.per_sample_entropy.detach(), codebook_entropy=enc.codebook_entropy.detach(),
            reconstruction=rec.detach(),
        )

    def generator_backward(self, batch: Mapping[str, Any], num_keep: int) -> GeneratorLosses:
        """Generator micro-step: losses, then backward of ``total / accumulate_grad_batches`` into the
        tokenizer's ``.grad`` only. The discriminator's parameters are frozen throughout, so its
        ``.grad`` is left exactly as it was."""
        with frozen(self.discriminator):
            losses = self.generator_losses(batch, num_keep)
            self._backward(losses.total / self.accumulate_grad_batches)
        return losses

    def discriminator_losses(self, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorLosses:
        """Hinge + LeCAM on D(real) and D(fake.detach()). LeCAM's EMA anchors move in train mode."""
        logits_real = self._discriminate(real)
        logits_fake = self._discriminate(fake.detach())
        hinge = hinge_d_loss(logits_real, logits_fake)
        lecam = self.lecam(logits_real, logits_fake) if self.weights.lecam > 0 else hinge.new_zeros(())
        return DiscriminatorLosses(
            total=hinge + self.weights.lecam * lecam, hinge=hinge, lecam=lecam,
            logits_real=logits_real.detach().float().mean(), logits_fake=logits_fake.detach().float().mean(),
        )

    def discriminator_backward(self, real: torch.Tensor, fake: torch.Tensor) -> DiscriminatorLosses:
        """Discriminator micro-step: the tokenizer is frozen and ``fake`` detached, so only the
        discriminator's ``.grad`` changes."""
        with frozen(self.tokenizer):
            losses = self.discriminator_losses(real, fake)
            self._backward(losses.total / self.accumulate_grad_batches)
        return losses

    # ---------------------------------------------------------------------------------------------
    # the training step

    def _step_boundary(self, batch_idx: int) -> bool:
        return (batch_idx + 1) % self.accumulate_grad_batches == 0 or bool(self.trainer.is_last_batch)

    def _note_finite(self, *losses: torch.Tensor) -> None:
        ok = torch.stack([torch.isfinite(loss.detach()).all() for loss in losses]).all()
        self._window_ok = ok if self._window_ok is None else self._window_ok & ok

    def _window_finite(self) -> bool | None:
        """Whether every loss of this step was finite on every rank (None: this step saw no images,
        every batch of it was unreadable). The one host sync per step (``bool``), plus one small
        all-reduce under DDP so that all ranks take the same branch."""
        ok, self._window_ok = self._window_ok, None
        if ok is None:
            return None
        bad = (~ok).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad > 0)

    def _grad_scaler(self) -> Any:
        """The precision plugin's loss scaler (16-mixed), or None (fp32, bf16, no Trainer attached)."""
        trainer = self._trainer
        return None if trainer is None else getattr(trainer.precision_plugin, "scaler", None)

    def _apply_step(self, optimizer: Any) -> None:
        if self.grad_clip is not None:
            if self._grad_scaler() is None:
                # nothing to unscale: clip directly (Lightning's clip_gradients refuses fused optimizers)
                params = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            else:  # unscale first, which Lightning's clipping does (the optimizers are not fused then)
                self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        num_keep = self.sampler.sample(self.train_steps)
        gan_active = self._gan_active()
        if "image" in batch:  # an all-unreadable batch carries only the skip counts
            g = self.generator_backward(batch, num_keep)
            d = self.discriminator_backward(batch["image"], g.reconstruction) if gan_active else None
            self._note_finite(g.total, *(() if d is None else (d.total,)))
            self._log_train(g, d, num_keep, batch_size=batch["image"].shape[0])
        if not self._step_boundary(batch_idx):
            return
        finite = self._window_finite()
        if finite:
            self._apply_step(opt_g)
            if gan_active:
                self._apply_step(opt_d)
            self.generator_updates += 1
            self.bad_steps = 0
        elif finite is False:
            self.bad_steps += 1
            log.warning(
                "step %d: non-finite loss, generator and discriminator updates skipped (%d in a row, limit %d)",
                self.train_steps, self.bad_steps, self.max_bad_steps,
            )
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        self.train_steps += 1
        if self.bad_steps >= self.max_bad_steps:
            raise TrainingError(
                f"training stopped at step {self.train_steps - 1}: {self.bad_steps} steps in a row had a non-finite "
                f"loss (model.params.max_bad_steps={self.max_bad_steps}); lower the learning rate or resume from an "
                "earlier checkpoint"
            )

    def on_train_epoch_end(self) -> None:
        if not self.trainer.is_last_batch:
            return  # stopped early by max_steps: the epoch did not end
        schedulers = self.lr_schedulers()
        with warnings.catch_warnings():
            # An optimizer that has not stepped yet (the discriminator before disc_start_step, or an
            # epoch of skipped steps) makes torch warn about the call order; the epoch count is right.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()

    def _log_train(self, g: GeneratorLosses, d: DiscriminatorLosses | None, num_keep: int, *, batch_size: int) -> None:
        # Per-rank values on_step (no all-reduce per step); Lightning converts them only when it writes logs.
        values: dict[str, Any] = {f"train/{k}": v for k, v in g.scalars().items()}
        values["train/g_loss"] = values.pop("train/total")
        if self.teacher is None:
            values.pop("train/align")
        if self.tokenizer.recovery is None or self.weights.recovery == 0:
            values.pop("train/recovery")
            values.pop("train/recovery_accuracy")
        if d is not None:
            dvals = d.scalars()
            values["train/d_loss"] = dvals.pop("total")
            values.update({f"train/d_{k}": v for k, v in dvals.items()})
        values["train/num_keep"] = float(num_keep)
        values["train/step"] = float(self.train_steps)
        opt_g, opt_d = self.optimizers()
        values["train/lr"] = opt_g.param_groups[0]["lr"]
        values["train/disc_lr"] = opt_d.param_groups[0]["lr"]
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/g_total", g.total.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=batch_size)

    # ---------------------------------------------------------------------------------------------
    # validation (raw weights here; the EMA callback runs the same metrics on the EMA weights)

    @torch.no_grad()
    def evaluation_metrics(self, tokenizer: MergeVQ, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Reconstruction metrics of ``tokenizer`` on ``batch["image"]`` at its nominal K: l1, psnr
        (per image, then the batch mean), lpips, recovery accuracy of the learned recovery, code usage
        and the quantizer's entropies."""
        x = batch["image"]
        out = tokenizer(x, tokenizer.config.num_keep)
        rec = out.reconstruction.float().clamp(-1, 1)
        metrics = {
            "l1": (rec - x.float()).abs().mean(),
            "psnr": psnr_per_image(rec.clamp(-1, 1), x).mean(),  # per image, then mean
            "lpips": self.perceptual(rec, x),
            "usage": batch_code_usage(out.encoded.indices, tokenizer.quantizer.codebook_size),
            "per_sample_entropy": out.encoded.per_sample_entropy.float(),
            "codebook_entropy": out.encoded.codebook_entropy.float(),
        }
        if out.recovery_logits is not None:
            metrics["recovery_accuracy"] = assignment_accuracy(out.recovery_logits, out.encoded.assign)
        return metrics

    def log_evaluation(self, prefix: str, metrics: Mapping[str, torch.Tensor], *, batch_size: int) -> None:
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if "image" not in batch:
            return
        self.log_evaluation("val", self.evaluation_metrics(self.tokenizer, batch), batch_size=batch["image"].shape[0])

    # ---------------------------------------------------------------------------------------------
    # checkpoint state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TRAIN_STATE_KEY] = {
            "train_steps": self.train_steps, "generator_updates": self.generator_updates, "bad_steps": self.bad_steps,
        }
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[RNG_STATE_KEY] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(TRAIN_STATE_KEY)
        if state is None:
            raise TrainingError("the checkpoint has no Stage 1 training state (not written by mergevq train)")
        self.train_steps = int(state["train_steps"])
        self.generator_updates = int(state["generator_updates"])
        self.bad_steps = int(state["bad_steps"])
        rng = checkpoint.get(RNG_STATE_KEY) or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            with contextlib.suppress(RuntimeError):  # a different number of visible GPUs
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
