"""``mergevq reconstruct``: original / reconstruction PNG pairs and merge-group pictures of a tokenizer
at given K values (DESIGN §6).

    mergevq reconstruct --out OUT_DIR [--num-keep 144,64] [--folder PATH | --demo] [--config NAME] [--raw]
                        [--group-scale N] [--batch-size N] [--num-workers N] [--devices N] [--accelerator A]
                        [--precision P] TOKENIZER [CONFIG ...] [data=NAME] [KEY=VALUE ...]

Data and settings as ``mergevq evaluate-tokenizer`` (task config configs/evaluation/tokenizer.yaml, the
data set a config group: data=folder or --folder PATH for any folder of images, data=demo or --demo;
eval.max_images=N for the first N only; the common flags set the eval keys their help names). OUT_DIR receives
``original/<name>.png``, ``K<k>/<name>.png`` and ``groups_K<k>/<name>.png`` (one colour per kept
token). ``original/`` and ``K<k>/`` are matching PNG folders that any folder-based FID tool reads.

OUT_DIR must be new, empty or an earlier ``mergevq reconstruct`` output, which is replaced (its
folders removed first, so no old image is left beside the new ones); any other folder or a file is
refused and left untouched.
"""

from __future__ import annotations

import argparse

from mergevq.cli.evaluate_tokenizer import add_common_arguments, prepare_eval, run_settings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct", help="write original / reconstruction pairs and merge-group pictures",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder")
    parser.add_argument("--group-scale", type=int, default=None, metavar="N",
                        help="pixel repetition of the merge-group pictures (default: about 256 px wide)")
    parser.set_defaults(run=run, trailing_items="items")


def run(args: argparse.Namespace) -> int:
    from mergevq.distributed import barrier, shutdown
    from mergevq.inference.reconstruct import OUTPUT_PATTERNS, reconstruct_images
    from mergevq.outputs import plan_output_dir

    # decided on every rank before any work; applied once every rank has joined the process group
    plan = plan_output_dir(args.out, command="reconstruct", settings=run_settings(args), patterns=OUTPUT_PATTERNS,
                           resumable=False)
    try:
        setup = prepare_eval(args)
        plan.apply_on_main(is_main=setup.context.is_main)
        result = reconstruct_images(
            setup.model, setup.dataset, num_keep=setup.num_keep, out_dir=args.out,
            batch_size=setup.settings["batch_size"], device=setup.device, context=setup.context,
            autocast_dtype=setup.autocast_dtype, num_workers=setup.settings["num_workers"],
            group_scale=args.group_scale,
        )
        if setup.context.is_main:
            skipped = f" ({result.num_skipped} skipped: unreadable or over the pixel limit)" if result.num_skipped else ""
            ks = ", ".join(str(k) for k in result.num_keep)
            print(f"wrote {result.num_images} images{skipped} at K = {ks} to {result.out_dir} "
                  f"in {result.seconds:.1f} s")
        barrier()
    finally:
        shutdown()
    return 0
