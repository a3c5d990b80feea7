"""How the Stage 1 step runs (issue #14, mergevq/training/speed.py): the compile / channels_last
switch and its log line, the eager fallback when compiling fails, channels_last equivalence, state
dicts under compile, and a training step without host synchronisation inside it.

A real inductor compile of the tiny tokenizer step takes minutes on a 2-core CPU (281 s measured),
so compiled-vs-eager equality is checked with dynamo's ``aot_eager`` backend: the same graph capture
and AOTAutograd forward/backward split, without generating C++.
"""

from __future__ import annotations

import copy
import functools
import logging

import lightning.pytorch as pl
import pytest
import torch

from mergevq.errors import ConfigError
from mergevq.tokenizer.decoder import depth_to_space
from mergevq.tokenizer.model import MergeVQ, preset
from mergevq.training import speed as speed_mod
from mergevq.training.speed import CompiledOrEager, StepSpeed, resolve_speed
from mergevq.training.tokenizer_module import TokenizerModule
from taming.modules.discriminator.patchgan import PatchGANDiscriminator

CPU = torch.device("cpu")


def _module(**params) -> TokenizerModule:
    torch.manual_seed(0)
    defaults = dict(
        tokenizer=preset("tiny-GR"), discriminator=PatchGANDiscriminator(ndf=8, n_layers=2), teacher=None,
        perceptual={"net": "alex", "weights_path": None, "random_init": True}, val_pictures=0,
    )
    return TokenizerModule(**{**defaults, **params}).train()


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# the switch and its log line


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", False), ("auto", "cuda", True), ("on", "cpu", True), ("off", "cuda", False)],
)
def test_compile_setting_resolves_per_device(setting, device, expected):
    assert resolve_speed(compile=setting, channels_last=True, device=torch.device(device)).compile is expected


def test_log_line_names_the_mode():
    assert StepSpeed(compile=True, channels_last=True).describe() == \
        "training step: torch.compile (inductor), channels_last"
    assert StepSpeed(compile=False, channels_last=False).describe() == "training step: eager, contiguous (NCHW)"


@pytest.mark.parametrize(("params", "key"), [({"compile": "yes"}, "compile"), ({"compile": True}, "compile"),
                                             ({"channels_last": "true"}, "channels_last")])
def test_bad_settings_are_one_line_config_errors(params, key):
    with pytest.raises(ConfigError, match=f"model.params.{key} must be") as info:
        _module(**params)
    assert "\n" not in str(info.value)


def test_fit_start_logs_one_line(caplog):
    module = _module(compile="off", channels_last=True)
    with caplog.at_level(logging.INFO):
        module.on_fit_start()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training step:")]
    assert lines == ["training step: eager, channels_last"]


# ---------------------------------------------------------------------------------------------
# fallback


class _CompileFailure(torch._dynamo.exc.TorchDynamoException):
    pass


def _failing_compiler(fn):
    def compiled(*args, **kwargs):
        raise _CompileFailure("backend failed: no C++ compiler")

    return compiled


def test_compile_failure_falls_back_to_eager_once():
    calls = []

    def fn(x):
        calls.append(x)
        return x + 1

    wrapped = CompiledOrEager(fn, name="thing", enabled=True, compiler=_failing_compiler)
    with pytest.warns(RuntimeWarning, match="torch.compile of the thing failed .*continuing in eager mode"):
        assert wrapped(1) == 2
    assert not wrapped.active
    assert wrapped(2) == 3 and calls == [1, 2]


def test_model_errors_are_not_swallowed_by_the_fallback():
    def compiled_raises(fn):
        def compiled(*args):
            raise ValueError("a real error")

        return compiled

    wrapped = CompiledOrEager(lambda x: x, name="thing", enabled=True, compiler=compiled_raises)
    with pytest.raises(ValueError, match="a real error"):
        wrapped(1)
    assert wrapped.active


def test_training_step_runs_on_when_compile_fails(monkeypatch):
    monkeypatch.setattr(torch, "compile", _failing_compiler)
    reference = _module(compile="off")
    module = _module(compile="on")
    assert module.prepare_step(CPU).compile
    x = _images()
    with pytest.warns(RuntimeWarning, match="torch.compile of the tokenizer failed"):
        losses = module.generator_backward({"image": x}, 9)
    expected = reference.generator_backward({"image": x}, 9)
    assert module.step_speed.describe() == "training step: eager, channels_last"
    torch.testing.assert_close(losses.total, expected.total)


# ---------------------------------------------------------------------------------------------
# channels_last


def test_depth_to_space_keeps_the_layout_and_the_values():
    x = torch.randn(2, 16, 3, 5)
    out = depth_to_space(x, 2)
    out_cl = depth_to_space(x.contiguous(memory_format=torch.channels_last), 2, channels_last=True)
    assert out.is_contiguous() and out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=0, atol=0)


# fp64: the layout logic is exact (same sums up to double rounding). fp32: oneDNN sums the NHWC and
# NCHW convolutions in different orders (~1e-6 relative), and the random-init decoder's last adaptive
# GroupNorm amplifies that ~300x on the 32 px images, so the reconstruction agrees to ~3e-4 absolute.
_LAYOUT_TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-3, atol=1e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["tiny-GR", "tiny-R"])
def test_channels_last_matches_the_contiguous_layout(name, dtype):
    torch.manual_seed(0)
    nchw = MergeVQ(config=preset(name)).to(dtype).train()
    nhwc = copy.deepcopy(nchw)
    nchw.set_channels_last(False)
    nhwc.set_channels_last(True)
    assert nhwc.decoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.decoder.levels[0].upsample.channels_last
    assert list(nhwc.state_dict()) == list(nchw.state_dict())
    x = _images().to(dtype)
    k = nchw.config.num_keep
    out_a, out_b = nchw(x, k), nhwc(x, k)
    tol = _LAYOUT_TOLERANCE[dtype]
    torch.testing.assert_close(out_b.encoded.indices, out_a.encoded.indices)
    torch.testing.assert_close(out_b.reconstruction, out_a.reconstruction, **tol)
    out_a.reconstruction.square().mean().backward()
    out_b.reconstruction.square().mean().backward()
    # against the largest gradient of the model: some gradients are 0 up to rounding (a bias before a
    # per-channel GroupNorm), where a per-tensor relative tolerance would compare noise
    scale = max(p.grad.abs().max().item() for p in nchw.parameters() if p.grad is not None)
    for (key, a), b in zip(nchw.named_parameters(), nhwc.parameters()):
        assert (a.grad is None) == (b.grad is None), key
        if a.grad is not None:
            torch.testing.assert_close(b.grad / scale, a.grad / scale, **tol, msg=lambda m, key=key: f"{key}: {m}")


def test_module_step_matches_between_layouts():
    x = _images()
    a, b = _module(channels_last=False), _module(channels_last=True)
    ga, gb = a.generator_backward({"image": x}, 9), b.generator_backward({"image": x}, 9)
    da = a.discriminator_backward(x, ga.reconstruction)
    db = b.discriminator_backward(x, gb.reconstruction)
    torch.testing.assert_close(gb.total, ga.total, **_LAYOUT_TOLERANCE[torch.float32])
    torch.testing.assert_close(db.total, da.total, **_LAYOUT_TOLERANCE[torch.float32])


# ---------------------------------------------------------------------------------------------
# compile and the module's state


def test_compile_leaves_state_dict_keys_and_ema_copy_alone():
    plain = _module(compile="off")
    compiled = _module(compile="on")
    assert compiled.prepare_step(CPU).compile  # wraps lazily; nothing compiles before a call
    keys = list(compiled.state_dict())
    assert keys == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in keys)
    ema = copy.deepcopy(compiled.tokenizer)  # what the EMA callback copies
    assert list(ema.state_dict()) == list(plain.tokenizer.state_dict())
    assert not hasattr(ema, "_compiled_call_impl") or ema._compiled_call_impl is None


def test_compiled_step_equals_eager_step(monkeypatch):
    """dynamo + AOTAutograd (``aot_eager``, no C++ codegen) against eager: same losses and gradients."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    x = _images()
    eager, compiled = _module(compile="off"), _module(compile="on")
    weights = {"l1": 1.0, "perceptual": 0.0, "gan": 0.1, "entropy": 0.1, "commit": 0.25, "recovery": 1.0}
    eager.weights = compiled.weights = type(eager.weights).from_mapping(weights)
    ge = eager.generator_backward({"image": x}, 9)
    gc = compiled.generator_backward({"image": x}, 9)
    assert compiled.step_speed.compile
    torch.testing.assert_close(gc.total, ge.total, rtol=1e-5, atol=1e-6)
    for (key, a), b in zip(eager.tokenizer.named_parameters(), compiled.tokenizer.parameters()):
        assert (a.grad is None) == (b.grad is None), key
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=key)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# no host synchronisation inside the step

_SYNCS = ("item", "tolist", "numpy", "nonzero", "__bool__", "__float__", "__int__")


class _SyncGuard:
    """Patches the Tensor methods that read a value on the host to raise while ``armed``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        for name in _SYNCS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._guarded(name, original))

    def _guarded(self, name, original):
        guard = self

        @functools.wraps(original)
        def method(tensor, *args, **kwargs):
            if guard.armed:
                raise AssertionError(f"host sync inside the training step: Tensor.{name}")
            return original(tensor, *args, **kwargs)

        return method


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        return {"image": _images(1)[0]}


def test_training_step_has_no_host_sync_but_the_step_decision(monkeypatch, tmp_path):
    """One real Lightning step (accumulation 2: a micro-batch that is not a step boundary, then one
    that is) with GAN, LeCAM, recovery, grad clipping: the only host read is the finiteness decision
    of the step."""
    guard = _SyncGuard(monkeypatch)
    module = _module(accumulate_grad_batches=2, grad_clip=1.0, compile="off",
                     loss_weights={"perceptual": 0.0})
    decisions = []
    window_finite = module._window_finite

    def decision():
        guard.armed = False
        try:
            decisions.append(window_finite())
            return decisions[-1]
        finally:
            guard.armed = True

    module._window_finite = decision
    training_step = module.training_step

    def guarded_step(*args, **kwargs):
        guard.armed = True
        try:
            return training_step(*args, **kwargs)
        finally:
            guard.armed = False

    module.training_step = guarded_step
    trainer = pl.Trainer(accelerator="cpu", max_steps=-1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_Images(), batch_size=1))
    assert decisions == [True]
    assert module.train_steps == 1 and module.generator_updates == 1


def test_bf16_mixed_step_clips_with_the_fused_optimizers(tmp_path):
    """bf16-mixed has no loss scaler: the fused Adams stay and clipping happens directly (Lightning's
    clip_gradients refuses fused optimizers); one step updates the weights and they stay finite."""
    module = _module(grad_clip=0.5, compile="off", loss_weights={"perceptual": 0.0})
    before = [p.detach().clone() for p in module.tokenizer.parameters()]
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_Images(), batch_size=1))
    opt_g, opt_d = trainer.optimizers
    assert opt_g.defaults["fused"] and opt_d.defaults["fused"]
    after = list(module.tokenizer.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
