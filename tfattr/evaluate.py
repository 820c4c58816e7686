"""`python -m tfattr.evaluate <subcommand>`: evaluation reports.

Subcommands (each registers itself in SUBCOMMANDS with an `add_arguments(parser)`
and a `run(args)`; add one by writing those two functions and one table entry):

  localization   face localization (Fig. 7) vs OpenCV's Haar cascade.
  attributes     per-attribute accuracy, majority baseline, means (all 40 / rendered).
"""

import argparse
import sys


def _localization_arguments(parser):
    parser.add_argument("--data", required=True, help="synthetic:DIR | celeba:DIR")
    parser.add_argument("--model", required=True,
                        help="a training workdir (lnet_o + lnet_s done)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--preset", default=None, help="default: the workdir's config.json, else tiny")
    parser.add_argument("--partition", type=int, default=2, help="0 train, 1 val, 2 test")
    parser.add_argument("--max-images", type=int, default=0, help="0: all")
    parser.add_argument("--num-heatmaps", type=int, default=12)
    parser.add_argument("--no-haar", action="store_true", help="skip the Haar baseline")


def _localization_run(args):
    from tfattr.data.celeba import parse_data_spec
    from tfattr.evaluation.localization import evaluate_localization

    evaluate_localization(parse_data_spec(args.data), args.model, args.out,
                          partition=args.partition, max_images=args.max_images,
                          num_heatmaps=args.num_heatmaps, preset=args.preset,
                          haar=not args.no_haar)
    print(f"wrote {args.out}/summary.md, summary.csv, metrics.json, roc_fppi.{{png,csv}}, "
          f"recall_vs_iou.{{png,csv}}, heatmaps/")
    return 0


def _attributes_arguments(parser):
    from tfattr.evaluation.attributes import add_arguments

    add_arguments(parser)


def _attributes_run(args):
    from tfattr.evaluation.attributes import run

    return run(args)


# name -> (help, add_arguments, run)
SUBCOMMANDS = {
    "localization": ("face localization report (Fig. 7) with a Haar baseline",
                     _localization_arguments, _localization_run),
    "attributes": ("Table-1 report (accuracy, balanced accuracy, majority baseline) of a SavedModel or training workdir",
                   _attributes_arguments, _attributes_run),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfattr.evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return SUBCOMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
