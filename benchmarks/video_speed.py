"""Frames per second of `fertrain predict VIDEO` on a 640x480 video with one face, and where the time
goes (decode, detection, model, writing), for README.md and benchmarks/results.md.

The video is made here from data/sample/astronaut.jpg (the photo edge-padded to 640x480 and panned a
pixel per frame, so no two frames are alike), written with the codec of `--suffix`. One short pass
first builds the model's functions, as any real run's first frames do; the timed passes follow.

    python benchmarks/video_speed.py --frames 300 --repeats 3 [--suffix .mp4] [--annotate] [--out table.csv]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fertrain.inference import load_classifier
from fertrain.predict import BUNDLED_MODEL, read_image
from fertrain.video import ANNOTATED_CODECS, STAGES, VideoOptions, predict_video

PHOTO = Path(__file__).resolve().parents[1] / "data" / "sample" / "astronaut.jpg"
WIDTH, HEIGHT, FPS = 640, 480, 30


def write_video(path: Path, frames: int) -> None:
    bgr = cv2.cvtColor(read_image(PHOTO), cv2.COLOR_RGB2BGR)
    pad_x, pad_y = (WIDTH - bgr.shape[1]) // 2, (HEIGHT - bgr.shape[0]) // 2
    padded = cv2.copyMakeBorder(bgr, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
    codec = cv2.VideoWriter_fourcc(*ANNOTATED_CODECS[path.suffix])
    writer = cv2.VideoWriter(str(path), codec, FPS, (WIDTH, HEIGHT))
    for index in range(frames):
        shift = index % 40 - 20
        writer.write(np.roll(padded, shift, axis=1))
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--suffix", default=".avi", choices=sorted(ANNOTATED_CODECS))
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--annotate", action="store_true", help="Also write the annotated video.")
    parser.add_argument("--out", default=None, help="Also write the table (.csv/.json) there.")
    args = parser.parse_args()

    classifier = load_classifier(BUNDLED_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / f"astronaut{args.suffix}"
        write_video(video, args.frames)
        annotated = Path(tmp) / f"annotated{args.suffix}" if args.annotate else None
        predict_video(classifier, video, VideoOptions(frames=32))
        options = VideoOptions(every=args.every, out=args.out, annotated=annotated)
        runs = [predict_video(classifier, video, options) for _ in range(args.repeats)]
    best = max(runs, key=lambda run: run.frames_per_s)
    per_frame = {stage: 1000 * best.stage_seconds[stage] / best.frames_read for stage in STAGES}
    other = 1000 * best.seconds / best.frames_read - sum(per_frame.values())
    codec = ANNOTATED_CODECS[args.suffix]
    print(
        json.dumps(
            {
                "cpu": platform.processor() or platform.machine(),
                "video": f"{WIDTH}x{HEIGHT} {args.suffix} {codec}, {args.frames} frames",
                "every": args.every,
                "annotate": args.annotate,
                "frames_per_s_best": round(best.frames_per_s, 1),
                "frames_per_s_all": [round(run.frames_per_s, 1) for run in runs],
                "faces_per_frame": best.faces / best.frames_analysed,
                "ms_per_frame": {stage: round(ms, 2) for stage, ms in per_frame.items()},
                "ms_per_frame_other": round(other, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
