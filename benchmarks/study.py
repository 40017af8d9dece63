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

import json
import os
import shlex
import sys
import time

from _machine import describe
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
    command = "python benchmarks/study.py " + shlex.join(sys.argv[1:])
    machine = describe()
    md = "\n".join(
        [
            f"# Study: {args.study}",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine}; {seconds / 60:.1f} minutes.  ",
            f"Settings: `{config}`",
            "",
            table,
            "",
            f"![{args.study}]({os.path.basename(png)})",
            "",
        ]
    )
    with open(os.path.join(args.out, f"study_{args.study}.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, f"study_{args.study}.json"), "w") as f:
        json.dump(
            {"command": command, "machine": machine, "seconds": seconds, **result},
            f,
            indent=2,
        )
    print(md)


if __name__ == "__main__":
    main()
