"""Summarises a profiler trace (`*.xplane.pb`, as jax.profiler and the TensorFlow profiler write it).

For every timeline (plane and line) whose plane name matches `--planes`: the span it covers, the
time its events take together, and the events taking most of it, summed by name. Used for the GPU
profile in benchmarks/results.md:

    python benchmarks/xplane_summary.py trace.xplane.pb --planes GPU --top 15
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from tensorflow.tsl.profiler.protobuf import xplane_pb2


def load(path: Path) -> xplane_pb2.XSpace:
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    return space


def summarise(space: xplane_pb2.XSpace, plane_pattern: str, top: int) -> list[str]:
    lines = []
    for plane in space.planes:
        if not re.search(plane_pattern, plane.name):
            continue
        names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.events:
                continue
            by_name: Counter[str] = Counter()
            counts: Counter[str] = Counter()
            first = min(event.offset_ps for event in line.events)
            last = max(event.offset_ps + event.duration_ps for event in line.events)
            for event in line.events:
                name = names.get(event.metadata_id, str(event.metadata_id))
                by_name[name] += event.duration_ps
                counts[name] += 1
            busy = sum(by_name.values())
            lines.append(
                f"## {plane.name} / {line.name}: {len(line.events)} events, "
                f"span {(last - first) / 1e9:.2f} ms, "
                f"events sum {busy / 1e9:.2f} ms"
            )
            for name, picoseconds in by_name.most_common(top):
                lines.append(
                    f"  {picoseconds / 1e9:10.3f} ms {100 * picoseconds / busy:5.1f}%"
                    f"  x{counts[name]:<5d} {name[:120]}"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--planes", default=".", help="regular expression over plane names")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print("\n".join(summarise(load(args.trace), args.planes, args.top)))


if __name__ == "__main__":
    main()
