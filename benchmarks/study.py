"""The four studies of flooding's mechanism, full versions (five seeds).

    python benchmarks/study.py flatness         # ~15 min on 2 CPU cores
    python benchmarks/study.py noise            # ~2 h
    python benchmarks/study.py derivation       # ~25 min
    python benchmarks/study.py second_descent   # ~30 min

Each writes results/study_<name>.{md,json,png} with the command that made it.
The same code runs short versions with ``floodax demo --study NAME``
(floodax/experiments/studies.py).
"""

from __future__ import annotations

import os
import time

from _machine import command, describe, write_results
from _machine import parser as make_parser

from floodax.experiments import studies

CONFIGS = {
    "flatness": studies.FlatnessConfig,
    "noise": studies.NoiseConfig,
    "derivation": studies.DerivationConfig,
    "second_descent": studies.SecondDescentConfig,
}


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("study", choices=sorted(CONFIGS))
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    config = CONFIGS[args.study](seeds=args.seeds, width=args.width)
    print(f"study {args.study}: {config}", flush=True)
    start = time.perf_counter()
    result, table, png = studies.run_study(args.study, config, out=args.out)
    seconds = time.perf_counter() - start
    command_line = command(__file__)
    machine = describe()
    md = "\n".join(
        [
            f"# Study: {args.study}",
            "",
            f"Command: `{command_line}`  ",
            f"Machine: {machine}; {seconds / 60:.1f} minutes.  ",
            f"Settings: `{config}`",
            "",
            table,
            "",
            f"![{args.study}]({os.path.basename(png)})",
            "",
        ]
    )
    write_results(
        args.out,
        f"study_{args.study}",
        md,
        {"command": command_line, "machine": machine, "seconds": seconds, **result},
    )


if __name__ == "__main__":
    main()
