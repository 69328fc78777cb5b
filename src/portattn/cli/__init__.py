"""``portattn``: ``info``, ``check``, ``bench``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portattn", description="Exact attention on whatever hardware is there.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, devices, and every backend: available or why not")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")

    check = sub.add_parser("check", help="run every available backend on the case battery vs the reference")
    check.add_argument("--backend", action="append", help="only this backend (repeatable)")
    check.add_argument("--device", default=None, help="device to run on (default: cuda if present, else cpu)")
    check.add_argument("--dtype", action="append", choices=["float32", "float16", "bfloat16"], help="repeatable")
    check.add_argument("--level", choices=["quick", "full"], default="quick", help="case battery size")
    check.add_argument("--no-grad", action="store_true", help="forward only")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from portattn.cli.bench import add_arguments

    add_arguments(sub.add_parser("bench", help="time backends and torch baselines on a shape grid (TFLOP/s)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from portattn.cli.info import run
    elif args.command == "check":
        from portattn.cli.check import run
    else:
        from portattn.cli.bench import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
