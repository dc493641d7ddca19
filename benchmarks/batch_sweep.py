"""Training throughput of one config at several batch sizes, and the fraction of a peak it reaches.

Used for the GPU figures in benchmarks/results.md (Keras on JAX, bfloat16, XLA: the `auto` choices
for a GPU), e.g.

    KERAS_BACKEND=jax python benchmarks/batch_sweep.py --config configs/xception.yaml \\
        --batch-sizes 128,256,512,1024 --peak-tflops 989 --out sweep.json

Training FLOPs per image are counted as 3 x 2 x the forward multiply-accumulates of
`fertrain summary` (forward, and the two backward products per layer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fertrain.benchmark import benchmark
from fertrain.config import load_config


def sweep(config_path: str, batch_sizes: list[int], steps: int, repeats: int, peak_tflops: float | None):
    config = load_config(config_path)
    rows = []
    for batch_size in batch_sizes:
        result = benchmark(config, batch_size=batch_size, steps=steps, repeats=repeats)
        row = result.to_dict()
        row["fraction_of_peak"] = None if not peak_tflops else round(result.train_tflops / peak_tflops, 4)
        rows.append(row)
        print(
            f"batch {batch_size:5d}: train {result.fertrain.train_images_per_s:10,.0f} img/s "
            f"(median {result.fertrain.train_images_per_s_median:,.0f}), "
            f"{result.train_tflops:7.2f} TFLOP/s"
            + (f" = {row['fraction_of_peak']:.1%} of {peak_tflops:g}" if peak_tflops else "")
            + f", predict {result.fertrain.predict_images_per_s:,.0f} img/s, "
            f"GPU peak {result.gpu_peak_mb} MiB, {result.mixed_precision}, XLA {result.jit_compile}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-sizes", default="128,256,512,1024")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="The device's dense peak.")
    parser.add_argument("--out", default=None, help="Also write the rows as JSON here.")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = sweep(args.config, batch_sizes, args.steps, args.repeats, args.peak_tflops)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    json.dump(rows, sys.stdout)
    print()


if __name__ == "__main__":
    main()
