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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
