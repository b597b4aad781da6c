"""`butd-frcnn convert`: the original weights -> a Hub-ready folder (-> the Hub)."""

import argparse
import logging
import sys

from ..hub_errors import show_traceback


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert the original .caffemodel (or a .pt of it) into a Hugging Face model folder",
        description=(
            "Convert the original bottom-up-attention .caffemodel (read without Caffe), a caffemodel2pytorch .pt or "
            "a transformers-research FRCNN checkpoint into a folder that AutoModel.from_pretrained loads; "
            "optionally push it to the Hugging Face Hub."
        ),
    )
    parser.add_argument("checkpoint", metavar="CAFFEMODEL", help=".caffemodel, or a .pt/.pth/.bin state dict")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to create (written atomically)")
    parser.add_argument("--prototxt", metavar="FILE", help="the original test.prototxt: proposal-layer parameters")
    parser.add_argument("--objects-vocab", metavar="FILE", help="objects_vocab.txt (class names)")
    parser.add_argument("--attributes-vocab", metavar="FILE", help="attributes_vocab.txt (attribute names)")
    parser.add_argument(
        "--boxes",
        choices=("10-100", "36"),
        help="default region selection (default: from the checkpoint's name; resnet101_faster_rcnn_final.caffemodel "
        "is 10-100, resnet101_faster_rcnn_final_iter_320000.caffemodel is 36; others 10-100)",
    )
    parser.add_argument("--score-threshold", type=float, metavar="T", help="selection score threshold (default 0.2)")
    parser.add_argument(
        "--bn-factor",
        type=float,
        metavar="F",
        help="BatchNorm moving-average factor, for .pt files that lost it (caffemodel2pytorch keeps two blobs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    hub = parser.add_argument_group(
        "Hugging Face Hub",
        "Checked before converting: that a token is there and that the Hub accepts it (a refused, expired or "
        "read-only token stops here; a Hub out of reach is a warning). Only at the end: creating the repository "
        "(rights to ORG) and the upload; if those fail, the folder stays complete and `hf upload ORG/NAME "
        "OUTPUT_DIR` pushes it later.",
    )
    hub.add_argument("--push-to-hub", metavar="ORG/NAME", help="push the folder to this model repository")
    hub.add_argument("--private", action="store_true", help="create the repository as private")
    hub.add_argument("--revision", metavar="R", help="branch to push to (created if needed)")
    hub.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    hub.add_argument("--token", help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from .convert import convert_caffemodel
    from .errors import ConversionError

    if not args.push_to_hub and (args.private or args.revision or args.create_pr):
        print("butd-frcnn convert: error: --private, --revision and --create-pr need --push-to-hub", file=sys.stderr)
        return 2
    try:
        result = convert_caffemodel(
            args.checkpoint,
            args.output_dir,
            prototxt=args.prototxt,
            objects_vocab=args.objects_vocab,
            attributes_vocab=args.attributes_vocab,
            boxes=args.boxes,
            score_threshold=args.score_threshold,
            bn_factor=args.bn_factor,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            token=args.token,
        )
    except (ConversionError, OSError) as error:
        print(f"butd-frcnn convert: error: {error}", file=sys.stderr)
        show_traceback(logging.getLogger(__name__))
        return 1
    print(f"converted {args.checkpoint} -> {result.output_dir}")
    print(result.report.summary())
    if result.hub_url:
        print(f"pushed to {result.hub_url}")
    return 0
