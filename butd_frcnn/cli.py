"""The `butd-frcnn` command line: one subcommand per tool.

Each tool module provides `add_parser(subparsers)`, which registers its subcommand and sets `func` to the function
that runs it (returning the process exit code).
"""

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="butd-frcnn",
        description="Bottom-up-attention Faster R-CNN: convert the original weights, extract region features.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    parser.add_argument(
        "--debug", action="store_true", help="log debugging details, and the traceback behind each error message"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _tool_parsers():
        add_parser(subparsers)
    return parser


def _tool_parsers():
    """The subcommands, imported lazily so that `butd-frcnn --help` stays fast."""
    from . import visualization
    from .compare import cli as compare_cli
    from .conversion import cli as conversion_cli
    from .extraction import cli as extraction_cli

    return [conversion_cli.add_parser, extraction_cli.add_parser, compare_cli.add_parser, visualization.add_parser]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.verbose or args.debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except Exception as error:  # a Hub failure no tool foresaw: still one line, not a traceback
        from .hub_errors import failure_line, hub_failure, show_traceback

        if hub_failure(error) is None:
            raise
        logger = logging.getLogger("butd_frcnn")
        logger.error("%s", failure_line(error, f"butd-frcnn {args.command}", "Files it wrote are kept.", "rerun it"))
        show_traceback(logger)
        return 1


if __name__ == "__main__":
    sys.exit(main())
