"""LFQ entropy loss: factorised / split-GEMM (mergevq) vs a dense softmax over all 2^18 codes.

What is measured: one forward + backward of the entropy loss ``E_n H(p_n) - H(mean_n p_n)`` for
``d = 18`` bits (262,144 codes), ``τ = 0.01``, fp32, at the Stage 1 training shapes

* G+R: 16 images × 144 kept tokens = 2,304 tokens,
* G:    8 images × 256 kept tokens = 2,048 tokens.

Methods:

* ``ours``: ``mergevq.tokenizer.quantizer.LFQ`` forward (it also computes codes, indices and the
  commitment loss, which the dense baseline does not) and ``entropy_loss.backward()``;
* ``dense``: the naive baseline: logits ``2 z Cᵀ / τ`` against the full ``(2^18, 18)`` codebook, an
  ``N × 2^18`` log-softmax, per-sample entropies and the mean distribution, then backward. It is
  deliberately not chunked: it is what the factorisation replaces.

Every (shape, method) runs in its own fresh subprocess, one at a time, on the same seeded input.
Time: median over ``--reps`` (ours, after one warm-up) or ``--dense-reps`` (dense, no warm-up: a
dense step takes tens of seconds on a CPU and its first run is representative). Peak memory:

* CPU: the growth of the process's peak resident set during the timed runs, i.e. peak RSS
  (``VmHWM``, reset through ``/proc/self/clear_refs`` after setup; ``ru_maxrss`` where that is not
  available) minus the RSS before the runs. It counts every allocation torch makes (which
  ``tracemalloc`` does not see), plus allocator and thread-pool overheads;
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` minus the allocation before the
  runs.

Accuracy: both methods are compared with the exact value, the factorised entropy evaluated in
float64 (tests/test_quantizer.py proves it equal to a float64 brute force over all 2^d codes), and
each entropy term of each method must be within ``--tol`` (default 1e-4) of it, relative; the script
exits with status 1 otherwise. The table also prints the absolute errors and the absolute
difference between the two methods. (The fp32 dense baseline is the less accurate of the two: its
softmax normaliser sums 2^18 fp32 terms, so its probabilities sum to 1 + O(1e-5).)

Inputs are ``z = z_scale · N(0, 1)`` (default 0.01, so the bit logits ``4 z / τ`` are O(1) and both
entropy terms are far from their trivial limits).

Usage::

    python benchmarks/bench_lfq.py                     # CPU, both shapes, ~2-3 minutes
    python benchmarks/bench_lfq.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SHAPES: dict[str, tuple[int, int]] = {"G+R": (16, 144), "G": (8, 256)}  # name -> (images, tokens)
DIM = 18
TAU = 0.01


# --------------------------------------------------------------------------------------------------
# worker (one method, one shape, fresh process)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(method: str, shape: str, device: str, reps: int, z_scale: float) -> dict:
    import torch

    from mergevq.tokenizer.quantizer import LFQ, indices_to_codes

    images, tokens = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    z0 = (z_scale * torch.randn(images, tokens, DIM, generator=gen)).to(device)  # (B, N, d) fp32

    if method == "ours":
        lfq = LFQ(dim=DIM, entropy_temperature=TAU)

        def step(z):
            out = lfq(z)
            out.entropy_loss.backward()
            return out.per_sample_entropy, out.codebook_entropy

    elif method == "dense":
        codebook = indices_to_codes(torch.arange(1 << DIM, device=device), DIM)  # (2^18, 18)
        tiny = torch.finfo(torch.float32).tiny

        def step(z):
            logits = (2.0 / TAU) * z.reshape(-1, DIM) @ codebook.t()  # (M, 2^18)
            logp = logits.log_softmax(dim=-1)
            p = logp.exp()
            sample_entropy = -(p * logp).sum(dim=-1).mean()
            p_mean = p.mean(dim=0)  # (2^18,)
            codebook_entropy = -(p_mean * p_mean.clamp_min(tiny).log()).sum()
            (sample_entropy - codebook_entropy).backward()
            return sample_entropy, codebook_entropy

    else:
        raise ValueError(f"unknown method {method!r}")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    warmup = 1 if method == "ours" else 0
    for _ in range(warmup):
        step(z0.clone().requires_grad_(True))
    sync()

    if device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        memory_method = "torch.cuda.max_memory_allocated - allocated before"
    else:
        exact_reset = _reset_peak_rss()
        base = _rss_kib() * 1024 if exact_reset else _peak_rss_kib() * 1024
        memory_method = "peak RSS (VmHWM) - RSS before" if exact_reset else "ru_maxrss delta"

    times_ms = []
    values = None
    for _ in range(reps):
        z = z0.clone().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        sample_entropy, codebook_entropy = step(z)
        sync()
        times_ms.append((time.perf_counter() - t0) * 1e3)
        values = (float(sample_entropy.detach()), float(codebook_entropy.detach()))
        del z, sample_entropy, codebook_entropy

    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_kib() * 1024
    # exact reference: the factorised / split-GEMM entropy in float64 (tests/test_quantizer.py
    # checks it against a float64 brute force over all 2^d codes to 1e-5; they agree to ~1e-12)
    with torch.no_grad():
        exact = LFQ(dim=DIM, entropy_temperature=TAU)(z0.double())
    return {
        "method": method,
        "shape": shape,
        "tokens": images * tokens,
        "time_ms": statistics.median(times_ms),
        "times_ms": times_ms,
        "peak_mb": (peak - base) / 2**20,
        "memory_method": memory_method,
        "per_sample_entropy": values[0],
        "codebook_entropy": values[1],
        "exact_per_sample_entropy": float(exact.per_sample_entropy),
        "exact_codebook_entropy": float(exact.codebook_entropy),
    }


# --------------------------------------------------------------------------------------------------
# driver


def _run_one(method: str, shape: str, args: argparse.Namespace) -> dict:
    reps = args.reps if method == "ours" else args.dense_reps
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker", method,
        "--shape", shape,
        "--device", args.device,
        "--reps", str(reps),
        "--z-scale", str(args.z_scale),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(
            f"bench_lfq: the {method} run at shape {shape} failed (status {proc.returncode})"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    parser.add_argument("--reps", type=int, default=10, help="timed runs of ours (median)")
    parser.add_argument("--dense-reps", type=int, default=2, help="timed runs of dense (median)")
    parser.add_argument("--z-scale", type=float, default=0.01)
    parser.add_argument(
        "--tol", type=float, default=1e-4, help="max relative error of each entropy term vs float64"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=("ours", "dense"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=tuple(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.shape, args.device, args.reps, args.z_scale)))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_lfq: --device cuda but no CUDA device is visible")
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"LFQ entropy loss, forward + backward, d={DIM} (2^{DIM} codes), tau={TAU}, fp32; "
        f"torch {torch.__version__}, {args.device} ({where}, {torch.get_num_threads()} threads)"
    )
    results = []
    for shape in args.shapes:
        ours = _run_one("ours", shape, args)
        dense = _run_one("dense", shape, args)
        for row in (ours, dense):
            row["abs_err"] = {
                term: abs(row[term] - ours[f"exact_{term}"])
                for term in ("per_sample_entropy", "codebook_entropy")
            }
            row["rel_err"] = max(
                row["abs_err"][term] / abs(ours[f"exact_{term}"]) for term in row["abs_err"]
            )
        diff = max(
            abs(ours[term] - dense[term]) for term in ("per_sample_entropy", "codebook_entropy")
        )
        results.append({"shape": shape, "ours": ours, "dense": dense, "max_abs_diff": diff})

    print(
        f"peak memory: {results[0]['ours']['memory_method']}; time: median of {args.reps} (ours) / "
        f"{args.dense_reps} (dense) runs; error: vs float64 exact, max over the two entropy terms"
    )
    header = (
        "| shape | tokens | method | time ms | peak MB | speed-up | memory ratio "
        "| E[H(p_n)] | H(p̄) | abs err | rel err |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    ok = True
    for res in results:
        ours, dense = res["ours"], res["dense"]
        for row in (dense, ours):
            is_ours = row is ours
            speed = f"{dense['time_ms'] / ours['time_ms']:.0f}×" if is_ours else "1×"
            mem = f"{dense['peak_mb'] / max(ours['peak_mb'], 1e-9):.0f}× less" if is_ours else "1×"
            ok &= row["rel_err"] <= args.tol
            print(
                f"| {res['shape']} | {row['tokens']} | {row['method']} | {row['time_ms']:.1f} "
                f"| {row['peak_mb']:.1f} | {speed} | {mem} "
                f"| {row['per_sample_entropy']:.6f} | {row['codebook_entropy']:.6f} "
                f"| {max(row['abs_err'].values()):.1e} | {row['rel_err']:.1e} |"
            )
    for res in results:
        print(f"{res['shape']}: max |ours - dense| over the two terms = {res['max_abs_diff']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not ok:
        print(
            f"FAILED: a method is off the float64 value by more than {args.tol:g} (relative)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
