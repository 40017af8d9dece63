"""One process of a :mod:`tests.multiprocess.harness` run.

``python -m tests.multiprocess.worker MODULE:NAME FOLDER ADDRESS N I HEARTBEAT``
joins the run with ``jax.distributed.initialize`` (process ``I`` of ``N``,
coordinator at ``ADDRESS``), calls ``NAME(FOLDER, **kwargs)`` with the
keyword arguments the harness pickled, and pickles what it returns (numpy
arrays and Python values) to ``FOLDER/result_I.pkl``.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    function, folder, address, num_processes, index, heartbeat = argv
    folder = Path(folder)
    import jax

    options = {
        "heartbeat_timeout_seconds": int(heartbeat),
        "initialization_timeout": 60,
    }
    # JAX 0.10 has it; 0.8 does not.
    if (
        "shutdown_timeout_seconds"
        in inspect.signature(jax.distributed.initialize).parameters
    ):
        options["shutdown_timeout_seconds"] = 30
    jax.distributed.initialize(
        address, num_processes=int(num_processes), process_id=int(index), **options
    )
    module, name = function.split(":")
    with open(folder / "kwargs.pkl", "rb") as f:
        kwargs = pickle.load(f)
    result = getattr(importlib.import_module(module), name)(folder, **kwargs)
    with open(folder / f"result_{index}.pkl", "wb") as f:
        pickle.dump(jax.device_get(result), f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
