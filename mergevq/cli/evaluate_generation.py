"""``mergevq evaluate-generation``: gFID, KID, precision/recall (and IS) of samples vs a reference.

    mergevq evaluate-generation SAMPLES --ref REF [--inception FILE [--inception-has-classifier]]
                                [--batch-size 50] [--out results.json] [--accelerator auto]

SAMPLES: an ADM-layout .npz (``arr_0`` N x H x W x 3 uint8, what ``mergevq sample`` writes) or a folder
of images. REF: an ADM reference batch .npz (``mu``/``sigma`` and/or ``arr_0``) or a folder of images.
FID uses REF's stored mu/sigma when present (they are pool3 statistics of the TF FID Inception, the
network behind the default weights, so the numbers are comparable); KID and precision/recall need
REF images. Inception Score needs ``--inception FILE --inception-has-classifier`` (weights with the
1008-way classifier, e.g. torch-fidelity's pt_inception-2015-12-05 file). Without --inception the
weights of ``mergevq prepare-weights`` are used (under ``$MERGEVQ_CACHE/weights``). Under torchrun each
rank extracts the features of its share of the images. ``--out`` writes the metrics as JSON: a new
file, or one an earlier evaluate-generation wrote (replaced); a folder or another file is refused
before any work.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate-generation", help="FID / KID / precision-recall / IS of samples vs a reference",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", metavar="SAMPLES", help="ADM-layout .npz (arr_0) or a folder of images")
    parser.add_argument("--ref", required=True, metavar="REF",
                        help="ADM reference batch .npz (mu/sigma and/or arr_0) or a folder of images")
    parser.add_argument("--inception", default=None, metavar="FILE",
                        help="a torch-fidelity InceptionV3 state dict (default: the prepare-weights file)")
    parser.add_argument("--inception-has-classifier", action="store_true",
                        help="the Inception weights have the real 1008-way classifier: also compute IS")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch and rank")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the metrics as JSON here")
    parser.add_argument("--accelerator", default="auto", help="auto | cpu | cuda | npu")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (capped at the smaller set)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mergevq.backend import select_backend
    from mergevq.distributed import init_from_env, shutdown
    from mergevq.errors import ConfigError
    from mergevq.inference.generation_eval import (
        COMMAND,
        MetricSettings,
        evaluate_generation,
        load_images,
        load_reference,
    )
    from mergevq.metrics.fid import InceptionFeatures
    from mergevq.outputs import check_output_file

    if args.batch_size < 1 or args.kid_subset_size < 2:
        raise ConfigError(f"--batch-size {args.batch_size} / --kid-subset-size {args.kid_subset_size}: "
                          "expected >= 1 / >= 2")
    if args.out:
        check_output_file(args.out, command=COMMAND)
    # the inputs first: a wrong path fails in a second, before any weights are read
    samples = load_images(args.samples)
    reference = load_reference(args.ref)
    backend = select_backend(accelerator=args.accelerator, precision="32")
    inception = InceptionFeatures.load(path=args.inception, has_classifier=args.inception_has_classifier,
                                       with_logits=args.inception_has_classifier)
    ctx = init_from_env(backend=backend.ddp_process_group_backend)
    try:
        metrics = evaluate_generation(samples, reference, inception=inception, device=backend.device(ctx.local_rank),
                                      batch_size=args.batch_size, ctx=ctx,
                                      settings=MetricSettings(kid_subset_size=args.kid_subset_size))
        if ctx.is_main:
            if args.out:
                metrics.write_json(args.out)
            _print(metrics)
    finally:
        shutdown()
    return 0


def _print(metrics) -> None:
    def fmt(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    source = "REF mu/sigma" if metrics.fid_from_stored_stats else f"{metrics.num_reference_images} REF images"
    print(f"samples: {metrics.num_samples} images ({metrics.samples_skipped} unreadable skipped)")
    print(f"FID: {metrics.fid:.4f} (vs {source})")
    print(f"KID: {fmt(metrics.kid_mean, 6)} +- {fmt(metrics.kid_std, 6)}")
    print(f"precision: {fmt(metrics.precision)}  recall: {fmt(metrics.recall)}")
    print(f"IS: {fmt(metrics.inception_score_mean, 2)} +- {fmt(metrics.inception_score_std, 2)}")
    if metrics.reference_skipped:
        print(f"reference: {metrics.reference_skipped} unreadable images skipped")
    for note in metrics.notes:
        print(f"note: {note}")
