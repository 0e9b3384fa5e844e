"""Native thread pools of a serving process, set before numpy, FAISS or torch load.

A server's parallelism comes from concurrent calls. OpenBLAS's and OpenMP's own worker threads
only add idle spinning between calls: measured on the demo stack, they burnt more CPU than the
work itself (52 ms of CPU per request across the processes, 24 ms with one thread each). The
variables are read once, when each library loads, so every entry point calls this first.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_native_libraries() -> None:
    """One thread per native call unless the environment already says otherwise."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
