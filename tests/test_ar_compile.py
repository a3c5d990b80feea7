"""The sampler's decode step compiles whole (issue 14 item 2): ``torch.compile(fullgraph=True)`` turns a
graph break or a host synchronisation (``.item()``, ``bool()``, a Python branch on a tensor value) into
an error. The ``aot_eager`` backend runs Dynamo and AOT autograd's functionalisation (what Inductor and
CUDA graphs build on) without generating code, so the check is fast on a CPU; results equal eager."""

from __future__ import annotations

import pytest
import torch

from mergevq.ar import sampling
from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import SamplingSettings, generate, teacher_forced_decode

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fullgraph(monkeypatch):
    """Compile the sampler's step functions with fullgraph=True on the aot_eager backend."""
    compiled: dict = {}

    def compile_step(fn, device):
        if fn not in compiled:
            compiled[fn] = torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager")
        return compiled[fn]

    torch._dynamo.reset()
    monkeypatch.setattr(sampling, "_compiled", compile_step)
    yield compiled
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def model() -> MergeAR:
    torch.manual_seed(0)
    return MergeAR(config=build_config(preset="tiny", changes={"grid": (4, 4), "window": 2})).eval()


def test_the_decode_step_compiles_whole_and_gives_the_eager_logits(model, fullgraph):
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 5, (3, 16), generator=g) * 977
    labels, num_keep = torch.tensor([1, 2, 10]), torch.tensor([3, 5, 16])
    for compressed in (True, False):
        eager = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep,
                                      compressed_cache=compressed)
        compiled = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep,
                                         compressed_cache=compressed, compile=True)
        for a, b in zip(eager.logits, compiled.logits, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(eager.entries, compiled.entries)
    assert sampling._feed in fullgraph


@pytest.mark.parametrize("settings", [
    SamplingSettings(temperature=1.0, cfg_scale=(2.0, 1.5), cfg_schedule="linear", top_p=0.9, exact_k=True),
    SamplingSettings(temperature=1.0, top_k=20),
], ids=["cfg-linear-exact-k", "free-top-k"])
def test_the_whole_token_step_compiles_and_samples_what_eager_samples(model, fullgraph, settings):
    # free mode: capacity P + 6 + w = 10 grows once, to the full 17, between compiled steps (two graphs)
    labels, num_keep, seeds = torch.tensor([1, 2, 3]), torch.tensor([3, 6, 4]), torch.arange(3)
    eager = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=settings, compile=False)
    compiled = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=settings, compile=True)
    assert torch.equal(eager.indices, compiled.indices)
    assert torch.equal(eager.peak_cache_entries, compiled.peak_cache_entries)
    assert eager.cache_capacity == compiled.cache_capacity  # the free mode grew outside the compiled step
    assert sampling._token_step in fullgraph


def test_compile_defaults_to_cuda_only():
    assert sampling.use_compile(None, torch.device("cuda")) and not sampling.use_compile(None, torch.device("cpu"))
    assert sampling.use_compile(True, torch.device("cpu")) and not sampling.use_compile(False, torch.device("cuda"))


def test_packed_linears_give_the_same_outputs_and_restore_the_modules(model):
    """The eager CPU step's pre-packed oneDNN linears: same hidden states up to float rounding, the
    parameters untouched, and every Linear back on its class forward after the block."""
    from mergevq.ar.model import packed_linears

    x = torch.randn(4, model.config.dim, generator=torch.Generator().manual_seed(1))
    before = {name: p.clone() for name, p in model.named_parameters()}
    linear = model.blocks[0].attention.wqkv
    reference = linear(x)
    with packed_linears(model, rows=4) as packed:
        inside = linear(x)
        assert packed == torch.backends.mkldnn.is_available()
    torch.testing.assert_close(inside, reference, rtol=1e-5, atol=1e-5)
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
