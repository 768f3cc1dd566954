"""What a durable local put costs: ``Storage.put`` (temporary file, fsync, rename, directory
fsync) against obstore's own put (staged and renamed, no fsync), per size.

    python -m bench.storage_put [--dir PATH] [--count 200]

``--dir`` should be on the disk the data dir lives on: the cost is the disk's fsync latency.
Each put goes to a new key in an existing folder (the common case: a task run's folder holds
several files); the first put of a new folder also syncs the folders it creates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import obstore
from obstore.store import LocalStore

from kestream.storage import Storage

SIZES = (1024, 64 * 1024, 1024 * 1024)


def _timed(put: Callable[[str, bytes], object], data: bytes, count: int, tag: str) -> list[float]:
    took = []
    for index in range(count):
        began = time.perf_counter()
        put(f"bench/{tag}/{index}", data)
        took.append((time.perf_counter() - began) * 1e6)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as where:
        root = Path(where)
        durable = Storage.local(root / "durable")
        plain = LocalStore(root / "plain", mkdir=True)
        print(f"{'size':>9} {'durable p50 us':>15} {'p99':>9} {'obstore p50 us':>15} {'p99':>9}")
        for size in SIZES:
            data = b"x" * size
            durable.put(f"bench/{size}/warm", data)
            obstore.put(plain, f"bench/{size}/warm", data)
            slow = sorted(_timed(durable.put, data, args.count, str(size)))
            fast = sorted(
                _timed(lambda k, d: obstore.put(plain, k, d), data, args.count, str(size))
            )
            p99 = max(0, int(args.count * 0.99) - 1)
            print(
                f"{size:>9} {statistics.median(slow):>15.0f} {slow[p99]:>9.0f} "
                f"{statistics.median(fast):>15.0f} {fast[p99]:>9.0f}"
            )


if __name__ == "__main__":
    main()
