"""One benchmark command for a GPU: training step, tokenizer, MergeAR sampling; one table, one JSON.

The GPU run (about 5 minutes on one H100 / H200; well under 8):

    bash benchmarks/gpu_suite.sh                          # = --device cuda; JSON under $OUT or benchmarks/results/
    bash benchmarks/gpu_suite.sh --device cpu --quick     # end-to-end check on a CPU, < 60 s (the test runs this)

What each row measures (random-init networks: same compute as trained ones, nothing is downloaded):

* ``train_step``: one full Stage 1 step of GR-d64 at 256 px (``--train-batch``, default 32): tokenizer
  forward at the nominal K = 144 with the DINOv2-B teacher and the student view, L1 + LPIPS-VGG + GAN +
  entropy + commitment + alignment + recovery losses, backward, Adam; then the PatchGAN hinge + LeCAM
  step. ``bf16-mixed`` semantics: fp32 weights and optimiser, ``torch.autocast(bfloat16)`` around each
  forward and loss. MFU = FLOPs counted over one whole step (``torch.utils.flop_counter``, forward and
  backward, generator and discriminator, teacher and LPIPS included: work the GPU really does) /
  median step time / the device's peak (``benchmarks/_flops.py``). A CUDA out-of-memory halves the batch.
* ``encode`` / ``decode``: GR-d64 tokenizer images/s at K = L (256), the nominal K (144) and the smallest
  K of its schedule (121), batch ``--tok-batch`` (64), inference mode, autocast.
* ``sample``: MergeAR-L (24 x 1024) ``generate`` on the 16 x 16 grid (L = 256) at K = 144, CFG 2.0 (2B
  rows), temperature 1, batch 1 / 64 / 256, full and compressed KV cache (alternated run by run);
  tokens/s = B * L / wall time of the whole sampling. The JSON holds the cache capacity and the rows'
  peak cache entries; batch-1 rows also show the weight-read floor of a decode step (weight bytes in the
  matmuls' dtype / the copy bandwidth measured on the device). ``--ar-weights bf16`` casts the weights to
  bf16 instead of autocasting.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights included) after a reset at the start of
each row; on a CPU the process's peak resident set (VmHWM, reset per row through /proc/self/clear_refs;
``ru_maxrss`` where that file is not writable, which cannot be reset and so is a running maximum). The
JSON says which (``memory_kind``).

Every row runs in its own ``try`` with a time limit: a failure prints an error row, the others still run,
and the exit status is 1 if any row failed. Each row is warmed up before it is timed.

``--compile auto|on|off`` (default auto: the library's own default, compiled on CUDA) switches the
training step and the sampler's decode step; the sampling rows run exact-K (both caches).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from _flops import Peak, measured_bandwidth, peak_flops
from _timing import median_seconds

import mergevq
from mergevq.ar.model import MergeAR
from mergevq.ar.model import build_config as ar_config
from mergevq.ar.sampling import SamplingSettings, generate
from mergevq.tokenizer.model import MergeVQ
from mergevq.tokenizer.model import build_config as tokenizer_config

ROOT = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Settings:
    """Sizes of one suite run (``--quick`` swaps in the tiny presets; see :func:`settings_from_args`)."""

    device: torch.device
    quick: bool
    precision: str  # "bf16-mixed" | "32"
    compile: str  # "auto" (the library's default: compiled on CUDA) | "on" | "off"
    tokenizer_preset: str
    train_batch: int
    teacher: bool
    perceptual_net: str
    disc_ndf: int
    disc_layers: int
    tok_batch: int
    ar_preset: str
    ar_changes: dict[str, Any]
    ar_batches: tuple[int, ...]
    ar_keep: int
    ar_weights: str  # "autocast" | "bf16"
    cfg_scale: float
    warmup: int
    reps: int
    ar_reps: int
    matmul_size: int
    bandwidth_bytes: int
    peak_tflops: float | None
    time_limits: dict[str, int] = field(default_factory=dict)  # seconds per row, by item

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16-mixed" else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    quick = args.quick
    cuda = args.device == "cuda"
    return Settings(
        device=torch.device(args.device), quick=quick, precision=args.precision, compile=args.compile,
        tokenizer_preset="tiny-GR" if quick else "GR-d64",
        train_batch=args.train_batch or (32 if cuda and not quick else 2), teacher=not quick and not args.no_teacher,
        perceptual_net="alex" if quick else "vgg", disc_ndf=8 if quick else 64, disc_layers=2 if quick else 3,
        tok_batch=args.tok_batch or (64 if cuda and not quick else 2),
        ar_preset="tiny" if quick else "L", ar_changes={"grid": (4, 4)} if quick else {},
        ar_batches=tuple(int(b) for b in args.ar_batches.split(",")) if args.ar_batches else
        ((1, 2) if quick else (1, 64, 256) if cuda else (1, 2)),
        ar_keep=9 if quick else 144, ar_weights=args.ar_weights, cfg_scale=2.0,
        warmup=1 if quick else 2, reps=args.reps or (2 if quick else 5), ar_reps=args.reps or (1 if quick else 2),
        matmul_size=512 if quick else 2048 if not cuda else 8192, peak_tflops=args.peak_tflops,
        bandwidth_bytes=2**30 if cuda and not quick else 2**26,
        time_limits=_time_limits(quick=quick, compile=args.compile),
    )


def _time_limits(*, quick: bool, compile: str) -> dict[str, int]:
    """Seconds per row, by item; compiling (on a CPU too, with --compile on) needs minutes."""
    limits = {"train_step": 300, "encode": 60, "decode": 60, "sample": 120 if compile == "off" else 240}
    if quick and compile != "on":
        limits = {"train_step": 60, "encode": 30, "decode": 30, "sample": 30}
    return limits


# The training step's switches (model.params.compile / channels_last, mergevq/training/speed.py). The
# FLOP count runs on the first step with compiled callables forced eager; the warm-up steps compile.
# Recorded per row in the JSON.
def train_module_switches(settings: Settings) -> dict[str, Any]:
    return {"compile": settings.compile, "channels_last": True}


# The sampler's switches: the compiled decode step (auto = the library's default, on for CUDA). Both
# caches sample in exact-K mode (sample_rows): without it a random-init model samples ~L distinct
# tokens, the compressed cache grows back to the full one's capacity and its row would measure the
# growth, not the compression. Recorded per row in the JSON.
def generate_switches(settings: Settings, *, compressed: bool) -> dict[str, Any]:
    return {"compile": {"auto": None, "on": True, "off": False}[settings.compile]}


# --------------------------------------------------------------------------------------------------
# rows, memory, time limits


@dataclass
class Row:
    """One line of the table. ``metrics`` holds numbers (and a few labels) for the JSON."""

    item: str
    setting: str
    status: str = "ok"  # ok | error | timeout
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class RowTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise RowTimeout in the main thread after ``seconds`` (SIGALRM; no limit where it is missing)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise RowTimeout(f"row exceeded its time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Memory:
    """Peak memory of one row: CUDA allocator peak, or the process's resident-set peak on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda" or _reset_rss_peak()
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated, reset per row (weights included)"
        elif self.resettable:
            self.kind = "process peak RSS (VmHWM), reset per row via /proc/self/clear_refs"
        else:
            self.kind = "ru_maxrss: process peak RSS since start (not resettable here)"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _reset_rss_peak()

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.resettable:
            match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
            if match:
                return int(match.group(1)) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    except OSError:
        return False
    return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(settings: Settings) -> contextlib.AbstractContextManager:
    dtype = settings.autocast_dtype
    return torch.autocast(settings.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:300]


def _record_failure(row: Row, err: BaseException) -> None:
    """A timeout row when RowTimeout is the error or its cause (the compiler wraps what interrupts it),
    else an error row."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, RowTimeout):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        row.status, row.error = "timeout", str(cause)
    else:
        row.status, row.error = "error", _one_line(err)


def run_row(row: Row, settings: Settings, memory: Memory, body: Callable[[Row], None]) -> Row:
    """Run ``body(row)`` (which fills ``row.metrics``) under the item's time limit; record peak memory,
    or turn any failure into an error / timeout row."""
    memory.reset()
    try:
        with time_limit(settings.time_limits[row.item]):
            body(row)
        row.metrics["peak_memory_bytes"] = memory.peak_bytes()
    except Exception as err:  # one failing row must not stop the suite
        _record_failure(row, err)
    print(f"  {row.item} {row.setting}: {row.status}" + (f" ({row.error})" if row.error else ""),
          file=sys.stderr, flush=True)
    return row


# --------------------------------------------------------------------------------------------------
# training step


def _train_module(settings: Settings):
    from bench_train_step import random_teacher

    from mergevq.training.tokenizer_module import TokenizerModule
    from taming.modules.discriminator.patchgan import PatchGANDiscriminator

    torch.manual_seed(0)
    return TokenizerModule(
        tokenizer=tokenizer_config(preset=settings.tokenizer_preset),
        discriminator=PatchGANDiscriminator(ndf=settings.disc_ndf, n_layers=settings.disc_layers),
        teacher=random_teacher(settings.teacher),
        perceptual={"net": settings.perceptual_net, "weights_path": None, "random_init": True},
        **train_module_switches(settings),
    ).to(settings.device).train()


def _train_batch(settings: Settings, batch: int, size: int) -> dict[str, torch.Tensor]:
    device = settings.device
    images = {"image": torch.rand(batch, 3, size, size, device=device) * 2 - 1}
    if settings.teacher:
        images["teacher_image"] = torch.randn(batch, 3, 224, 224, device=device)
        images["student_image"] = torch.rand(batch, 3, 224, 224, device=device) * 2 - 1
    return images


def train_step_row(settings: Settings, peak: Peak | None) -> Callable[[Row], None]:
    def body(row: Row) -> None:
        module = _train_module(settings)
        (opt_g, opt_d), _ = module.configure_optimizers()
        num_keep = module.tokenizer.config.num_keep
        size = module.tokenizer.config.image_size

        def make_step(images: dict[str, torch.Tensor]) -> Callable[..., None]:
            def step(count_g: contextlib.AbstractContextManager = contextlib.nullcontext(),
                     count_d: contextlib.AbstractContextManager = contextlib.nullcontext()) -> None:
                with count_g, _autocast(settings):
                    g = module.generator_backward(images, num_keep)
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)
                with count_d, _autocast(settings):
                    module.discriminator_backward(images["image"], g.reconstruction)
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)
            return step

        batch = settings.train_batch
        while True:  # the first step doubles as the FLOP count; a CUDA out-of-memory halves the batch
            step = make_step(_train_batch(settings, batch, size))
            counters = (FlopCounterMode(display=False), FlopCounterMode(display=False))
            try:
                with torch.compiler.set_stance("force_eager"):  # count eager kernels; compile in the warm-up
                    step(*counters)
                break
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
            # out of the except block, so that the traceback's frames (and activations) are gone
            opt_g.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            del step
            batch //= 2
            gc.collect()
            torch.cuda.empty_cache()
        flops_g, flops_d = (int(counter.get_total_flops()) for counter in counters)
        flops = flops_g + flops_d
        for _ in range(settings.warmup):  # compiles here when the module compiles
            step()
        seconds = median_seconds(step, reps=settings.reps, device=settings.device)
        row.setting = f"{settings.tokenizer_preset} {size}px b{batch} K={num_keep} {settings.precision}"
        row.metrics.update(
            batch=batch, image_size=size, num_keep=num_keep, step_seconds=seconds, images_per_second=batch / seconds,
            flops_per_step=flops, flops_generator_step=flops_g, flops_discriminator_step=flops_d,
            achieved_tflops=flops / seconds / 1e12, mfu=flops / seconds / peak.flops if peak is not None else None,
            teacher=settings.teacher, perceptual=settings.perceptual_net,
            parameters_generator=sum(p.numel() for p in module.tokenizer.parameters()),
            parameters_discriminator=sum(p.numel() for p in module.discriminator.parameters()),
            switches=train_module_switches(settings),
        )

    return body


# --------------------------------------------------------------------------------------------------
# tokenizer encode / decode


def tokenizer_rows(settings: Settings, memory: Memory) -> list[Row]:
    cfg = tokenizer_config(preset=settings.tokenizer_preset)
    ks = [cfg.num_tokens, cfg.num_keep, min(cfg.k_candidates)]
    label = f"{settings.tokenizer_preset} {cfg.image_size}px b{settings.tok_batch}"
    state: dict[str, Any] = {}

    def model() -> MergeVQ:
        if "model" not in state:
            torch.manual_seed(0)
            state["model"] = MergeVQ(config=cfg).to(settings.device).eval()
            shape = (settings.tok_batch, 3, cfg.image_size, cfg.image_size)
            state["x"] = torch.rand(shape, device=settings.device) * 2 - 1
        return state["model"]

    def timed(row: Row, fn: Callable[[], object], k: int) -> None:
        with torch.inference_mode(), _autocast(settings):
            for _ in range(settings.warmup):
                fn()
            seconds = median_seconds(fn, reps=settings.reps, device=settings.device)
        row.metrics.update(num_keep=k, batch=settings.tok_batch, seconds=seconds,
                           images_per_second=settings.tok_batch / seconds)

    rows = []
    for k in ks:
        def encode(row: Row, k: int = k) -> None:
            m = model()
            timed(row, lambda: m.encode(state["x"], k), k)

        def decode(row: Row, k: int = k) -> None:
            m = model()
            with torch.inference_mode(), _autocast(settings):
                enc = m.encode(state["x"], k)
            timed(row, lambda: m.decode(enc.indices, enc.assign), k)

        rows.append(run_row(Row("encode", f"{label} K={k}"), settings, memory, encode))
        rows.append(run_row(Row("decode", f"{label} K={k}"), settings, memory, decode))
    state.clear()
    return rows


# --------------------------------------------------------------------------------------------------
# MergeAR sampling


def sample_rows(settings: Settings, memory: Memory) -> list[Row]:
    state: dict[str, Any] = {}
    sampling = SamplingSettings(cfg_scale=settings.cfg_scale, temperature=1.0, exact_k=True)
    # the weight-read floor of one decode step: every weight read once, in the dtype the matmuls use
    bandwidth = measured_bandwidth(settings.device, nbytes=settings.bandwidth_bytes)
    compute_bytes = 2 if settings.ar_weights == "bf16" or settings.autocast_dtype is not None else 4
    length = ar_config(preset=settings.ar_preset, changes=settings.ar_changes or None).num_tokens

    def model() -> MergeAR:
        if "model" not in state:
            torch.manual_seed(0)
            m = MergeAR(config=ar_config(preset=settings.ar_preset, changes=settings.ar_changes or None))
            if settings.ar_weights == "bf16":
                m = m.to(dtype=torch.bfloat16)
            state["model"] = m.to(settings.device).eval()
        return state["model"]

    def run_once(batch: int, compressed: bool) -> tuple[float, Any]:
        m = model()
        labels = torch.arange(batch, device=settings.device) % m.config.num_classes
        context = _autocast(settings) if settings.ar_weights == "autocast" else contextlib.nullcontext()
        _sync(settings.device)
        start = time.perf_counter()
        with context:
            out = generate(m, labels=labels, num_keep=settings.ar_keep, seeds=torch.arange(batch), settings=sampling,
                           compressed_cache=compressed, **generate_switches(settings, compressed=compressed))
        _sync(settings.device)
        return time.perf_counter() - start, out

    rows = []
    for batch in settings.ar_batches:
        pair = {}
        for kind in ("full", "compressed"):
            setting = (f"MergeAR-{settings.ar_preset} L={length} K={settings.ar_keep} b{batch} "
                       f"cfg {settings.cfg_scale:g} {kind} cache")

            def warm(row: Row, batch: int = batch, compressed: bool = kind == "compressed") -> None:
                _, out = run_once(batch, compressed)  # warm-up; also the row's peak memory and cache statistics
                row.metrics.update(batch=batch, num_tokens=length, num_keep=settings.ar_keep,
                                   cache_capacity=int(out.cache_capacity),
                                   mean_peak_cache_entries=float(out.peak_cache_entries.float().mean()),
                                   mean_unique_tokens=float(out.unique_tokens.float().mean()),
                                   weights=settings.ar_weights, times=[], bandwidth_bytes_per_second=bandwidth,
                                   weight_bytes=model().parameter_count() * compute_bytes,
                                   switches=generate_switches(settings, compressed=compressed))

            pair[kind] = run_row(Row("sample", setting), settings, memory, warm)
        # timed runs alternate the two caches so that load drift hits both alike
        for _ in range(settings.ar_reps):
            for kind, row in pair.items():
                if row.status != "ok":
                    continue
                try:
                    with time_limit(settings.time_limits["sample"]):
                        seconds, _ = run_once(batch, kind == "compressed")
                    row.metrics["times"].append(seconds)
                except Exception as err:
                    _record_failure(row, err)
        for row in pair.values():
            if row.status == "ok":
                seconds = statistics.median(row.metrics["times"])
                row.metrics.update(seconds=seconds, tokens_per_second=batch * row.metrics["num_tokens"] / seconds,
                                   step_ms=1e3 * seconds / row.metrics["num_tokens"],
                                   floor_step_ms=1e3 * row.metrics["weight_bytes"] / bandwidth)
            rows.append(row)
        if pair["full"].status == "ok" and pair["compressed"].status == "ok":
            pair["compressed"].metrics["speed_vs_full"] = (pair["compressed"].metrics["tokens_per_second"]
                                                           / pair["full"].metrics["tokens_per_second"])
    state.clear()
    return rows


# --------------------------------------------------------------------------------------------------
# report


def _flop_rate(flops_per_second: float) -> str:
    for scale, unit in ((1e12, "TFLOP/s"), (1e9, "GFLOP/s")):
        if flops_per_second >= scale:
            return f"{flops_per_second / scale:.1f} {unit}"
    return f"{flops_per_second / 1e6:.1f} MFLOP/s"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cells(row: Row) -> list[str]:
    m = row.metrics
    if row.status != "ok":
        return [row.item, row.setting, "-", "-", "-", "-", f"{row.status}: {row.error}"]
    if row.item == "train_step":
        throughput, time_cell = f"{m['images_per_second']:.2f} img/s", f"{1e3 * m['step_seconds']:.1f} ms/step"
        achieved = _flop_rate(m["achieved_tflops"] * 1e12)
        mfu = f"{100 * m['mfu']:.1f} % ({achieved})" if m["mfu"] is not None else f"- ({achieved})"
    elif row.item in ("encode", "decode"):
        throughput, time_cell, mfu = f"{m['images_per_second']:.2f} img/s", f"{1e3 * m['seconds']:.1f} ms/batch", "-"
    else:
        throughput, time_cell = f"{m['tokens_per_second']:.1f} tok/s", f"{m['step_ms']:.2f} ms/token step"
        extra = f"; {m['speed_vs_full']:.2f}x full" if "speed_vs_full" in m else ""
        floor = f"; floor {m['floor_step_ms']:.3f} ms" if m["batch"] == 1 else ""
        mfu = f"cache {m['cache_capacity']} slots{extra}{floor}"
    return [row.item, row.setting, throughput, time_cell, mfu, _bytes(m.get("peak_memory_bytes")), "ok"]


def markdown_table(rows: list[Row]) -> str:
    header = ["item", "setting", "throughput", "time", "MFU / cache", "peak memory", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in _cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def environment(settings: Settings, peak: Peak | None, memory: Memory) -> dict[str, Any]:
    device = settings.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": device.type, "device_name": name, "torch": torch.__version__, "mergevq": mergevq.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "peak_tflops": None if peak is None else peak.flops / 1e12,
        "peak_source": None if peak is None else peak.source, "memory_kind": memory.kind,
    }


def default_json_path(device: torch.device) -> Path:
    out = os.environ.get("OUT")
    if out:
        return Path(out) / "gpu_suite.json"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return ROOT / "results" / f"gpu_suite-{device.type}-{stamp}.json"


# --------------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny presets, batch 1-2, few reps (a CPU check)")
    parser.add_argument("--precision", choices=("bf16-mixed", "32"), default="bf16-mixed")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="training step and decode step compile switch (auto: the library's default, on for CUDA)")
    parser.add_argument("--json", type=Path, default=None, help="JSON path (default: $OUT/gpu_suite.json, else "
                        "benchmarks/results/gpu_suite-<device>-<time>.json)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s for MFU, in TFLOP/s")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (cuda 32, cpu 2)")
    parser.add_argument("--tok-batch", type=int, default=None, help="encode / decode batch (cuda 64, cpu 2)")
    parser.add_argument("--ar-batches", default=None, help="comma-separated sampling batches (cuda 1,64,256)")
    parser.add_argument("--ar-weights", choices=("autocast", "bf16"), default="autocast",
                        help="MergeAR: fp32 weights under autocast (the sample CLI's bf16-mixed) or bf16 weights")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per row")
    parser.add_argument("--no-teacher", action="store_true", help="train step without the DINOv2 teacher")
    parser.add_argument("--only", default="train,tokenizer,sample", help="comma-separated groups to run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads or args.quick:  # tiny models: one thread is faster, far faster on a shared CPU
        torch.set_num_threads(args.threads or 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: --device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    groups = set(args.only.split(","))
    if settings.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    memory = Memory(settings.device)
    started = time.perf_counter()

    peak: Peak | None = None
    rows: list[Row] = []
    if "train" in groups:
        try:
            peak = peak_flops(settings.device, override_tflops=settings.peak_tflops, matmul_size=settings.matmul_size)
        except Exception as err:  # no peak: the row still runs, without MFU
            print(f"gpu_suite: peak FLOP/s unavailable ({_one_line(err)})", file=sys.stderr)
        rows.append(run_row(Row("train_step", settings.tokenizer_preset), settings, memory,
                            train_step_row(settings, peak)))
    if "tokenizer" in groups:
        rows += _group(lambda: tokenizer_rows(settings, memory), "encode", settings.tokenizer_preset)
    if "sample" in groups:
        rows += _group(lambda: sample_rows(settings, memory), "sample", f"MergeAR-{settings.ar_preset}")

    report = {
        "suite": "mergevq benchmarks/gpu_suite.py", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv), "wall_seconds": time.perf_counter() - started,
        "settings": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in asdict(settings).items()},
        "environment": environment(settings, peak, memory),
        "rows": [asdict(row) for row in rows],
    }
    env = report["environment"]
    print(f"\nmergevq gpu_suite: {env['device_name']} ({env['device']}), torch {env['torch']}, {settings.precision}"
          f", compile {settings.compile}{', quick' if settings.quick else ''}; "
          f"peak {'-' if peak is None else f'{_flop_rate(peak.flops)} ({peak.source})'}; "
          f"memory: {memory.kind}\n")
    print(markdown_table(rows))
    path = args.json or default_json_path(settings.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nJSON: {path} ({report['wall_seconds']:.0f} s)")
    return 0 if rows and all(row.status == "ok" for row in rows) else 1


def _group(build: Callable[[], list[Row]], item: str, setting: str) -> list[Row]:
    """A group's rows; a failure outside any row (e.g. building the model) becomes one error row."""
    try:
        return build()
    except Exception as err:
        return [Row(item, setting, status="error", error=_one_line(err))]


if __name__ == "__main__":
    sys.exit(main())
