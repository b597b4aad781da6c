"""`butd-frcnn compare A B`: how well two feature files agree, with an exit code for scripts."""

import json
import logging
from pathlib import Path

from ..extraction.formats import FORMATS
from ..extraction.records import ExtractionError
from .compare import ID_MATCHING, compare_files
from .matching import ASSIGNMENTS
from .metrics import IOU_LEVELS
from .report import Thresholds

logger = logging.getLogger(__name__)

EXIT_DISAGREE = 1
EXIT_ERROR = 2


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare two feature files (boxes, features, labels) and say whether they agree",
        description="Compare the regions of every image present in both A and B: boxes paired one-to-one by IoU, "
        "features on the paired boxes (and paired by feature similarity alone), object and attribute ids, box "
        "counts. Prints a worst-first table and a summary; exits 0 when the agreement passes the thresholds, "
        f"{EXIT_DISAGREE} when it does not, {EXIT_ERROR} when a file cannot be read.",
    )
    parser.add_argument("a", type=Path, metavar="A", help="a feature file (BUTD/LXMERT TSV, HDF5) or npz folder")
    parser.add_argument("b", type=Path, metavar="B", help="the feature file to compare it with")
    parser.add_argument("--report", type=Path, help="write the full comparison (every image) as JSON here")
    parser.add_argument("--images", type=int, metavar="N", help="compare only the first N common images (A's order)")
    parser.add_argument("--format-a", choices=FORMATS, help="A's format (default: detected)")
    parser.add_argument("--format-b", choices=FORMATS, help="B's format (default: detected)")
    parser.add_argument(
        "--suffix", help="golden-style npz folders: the selection to read (keys like boxes_10_100: give 10_100)"
    )
    parser.add_argument("--suffix-a", help="--suffix for A only")
    parser.add_argument("--suffix-b", help="--suffix for B only")
    parser.add_argument(
        "--matching", choices=tuple(ASSIGNMENTS), default="hungarian", help="box pairing (default: hungarian)"
    )
    parser.add_argument(
        "--match-iou", type=float, default=0.5, help="IoU from which paired boxes count as matched (default 0.5)"
    )
    parser.add_argument(
        "--ids", choices=ID_MATCHING, default="exact", help="pair images by exact id, or by the last number in the id"
    )
    parser.add_argument(
        "--agreement-iou",
        type=float,
        choices=IOU_LEVELS,
        default=0.9,
        help="IoU a box pair needs to agree (default 0.9)",
    )
    parser.add_argument(
        "--min-box-agreement", type=float, default=0.95, help="fraction of boxes that must agree (default 0.95)"
    )
    parser.add_argument(
        "--min-cosine", type=float, default=0.99, help="mean feature cosine required on matched boxes (default 0.99)"
    )
    parser.add_argument("--max-missing", type=int, default=0, help="images allowed in one file only (default 0)")
    parser.add_argument("--show", type=int, default=20, metavar="ROWS", help="rows of the worst-first table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_compare)


def run_compare(args) -> int:
    thresholds = Thresholds(args.agreement_iou, args.min_box_agreement, args.min_cosine, args.max_missing)
    try:
        report = compare_files(
            args.a,
            args.b,
            format_a=args.format_a,
            format_b=args.format_b,
            suffix_a=args.suffix_a or args.suffix,
            suffix_b=args.suffix_b or args.suffix,
            max_images=args.images,
            matching=args.matching,
            match_iou=args.match_iou,
            id_matching=args.ids,
            progress=not args.no_progress,
        )
    except ExtractionError as error:
        logger.error("%s", error)
        return EXIT_ERROR
    print(report.text(thresholds, args.show))
    if args.report:
        args.report.write_text(json.dumps(report.to_json(thresholds), indent=1))
        print(f"report: {args.report}")
    return EXIT_DISAGREE if report.failures(thresholds) else 0
