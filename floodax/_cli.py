"""The ``floodax`` command line: ``floodax verify``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floodax",
        description="floodax: flooding, alternating steps and gradient-norm penalties.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="check numerically that two alternating steps equal one penalised "
        "step up to O(ε³)",
        description="Fits the order of the second-order derivation's error on a "
        "small float64 MLP (theory: 3, against 2 for the first-order guess) and "
        "exits non-zero if an order is more than 0.2 from theory.",
    )
    verify.add_argument("--seed", type=int, default=0, help="seed of the MLP and data")
    verify.add_argument(
        "--largest-rate",
        type=float,
        default=0.2,
        help="ε1 of the first rung of the rate ladder (default 0.2)",
    )
    verify.add_argument(
        "--num-rates", type=int, default=6, help="rungs of the ladder, halving ε1"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "verify":
        from floodax._verify import run_verify

        if not args.largest_rate > 0:
            _parser().error("--largest-rate must be positive")
        if args.num_rates < 2:
            _parser().error("--num-rates must be at least 2 to fit a slope")
        lines, ok = run_verify(
            seed=args.seed, largest_rate=args.largest_rate, num_rates=args.num_rates
        )
        print("\n".join(lines))
        return 0 if ok else 1
    raise AssertionError(args.command)  # argparse rejects unknown commands
