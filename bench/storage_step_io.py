"""How long the executor's step waits on the internal storage, per stored value.

The executor steps on its event loop, and a few storage calls happen inside a step: an
expression reading a stored value (``ReferenceLoader.load``, at most ``READ_MAX_BYTES``, 16 MiB,
then cached), and the stores of values the step itself produces past the inline threshold
(outputs of tasks run inline, flow outputs, a child's outputs handed to its parent, a
ForEachItem's spilled list). This measures one cold read and one store per size, on the storage
the settings name (``KESTREAM_STORAGE_URL`` and ``KESTREAM_STORAGE_S3_*``; a local directory
under a temporary data dir by default):

    python -m bench.storage_step_io [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from kestream.executor.references import ReferenceLoader, encoded
from kestream.settings import get_settings
from kestream.storage import execution_prefix, storage_from_settings, to_uri
from kestream.storage.access import ExecutionFiles
from kestream.storage.offload import reference

SIZES = (64 * 1024, 1024 * 1024, 16 * 1024 * 1024 - 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    storage = storage_from_settings(get_settings())
    execution = f"bench-{uuid.uuid4().hex[:8]}"
    files = ExecutionFiles("bench", "io", execution)
    folder = execution_prefix("bench", "io", execution)
    print(f"storage: {storage.description}")
    head = ("value bytes", 12), ("store p50 ms", 13), ("max", 7), ("cold read p50 ms", 17)
    print(" ".join(f"{name:>{width}}" for name, width in head), f"{'max':>7}")
    try:
        for size in SIZES:
            data = encoded("x" * (size - 2))
            stores, reads = [], []
            for index in range(args.repeat):
                key = f"{folder}v{size}-{index}.json"
                began = time.perf_counter()
                storage.put(key, data)
                stores.append((time.perf_counter() - began) * 1e3)
                loader = ReferenceLoader()  # cold: nothing cached
                began = time.perf_counter()
                loader.load(reference(to_uri(key), len(data)), files, "bench", storage)
                reads.append((time.perf_counter() - began) * 1e3)
            print(
                f"{len(data):>12} {statistics.median(stores):>13.1f} {max(stores):>7.1f} "
                f"{statistics.median(reads):>17.1f} {max(reads):>7.1f}"
            )
    finally:
        storage.delete_prefix(folder)


if __name__ == "__main__":
    main()
