"""`fertrain predict`: emotions of faces in photos, videos and camera frames."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fertrain.cli.app import (
    Command,
    TtaOption,
    app,
    console,
    err_console,
)
from fertrain.inference import Normalization

PREDICT_ARGUMENTS = (
    "[MODEL] IMAGE_OR_DIR... | [MODEL] VIDEO | [MODEL] --camera INDEX: MODEL is a run directory, a "
    ".keras/.h5 file or a SavedModel directory; without it the newest run in ./runs (else a model bundled "
    "with fertrain) is used. Directories are searched for images (not recursively). A video (.mp4, .avi, "
    ".mov, .mkv, .webm, ...) or a camera has its faces found in every analysed frame; "
    "--out writes one row per face (frame, time, box, the 7 probabilities, top emotion), growing as frames "
    "are analysed, so an error or Ctrl-C keeps the rows so far. A camera runs until --frames or Ctrl-C."
)
VIDEO_ONLY_OPTIONS = ("--out", "--every", "--frames", "--show")


@app.command(cls=Command, epilog=PREDICT_ARGUMENTS)
def predict(
    arguments: Annotated[
        list[str] | None,
        typer.Argument(metavar="[MODEL] IMAGE_OR_DIR... | [MODEL] VIDEO", help="See below."),
    ] = None,
    detect_faces: Annotated[
        bool,
        typer.Option(
            "--detect-faces", help="Classify every face OpenCV's Haar cascade finds (always on for video)."
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON list (video: the summary) instead of tables.")
    ] = False,
    annotate: Annotated[
        str | None,
        typer.Option(
            metavar="DIR|VIDEO",
            help="Images: write copies with boxes and labels into DIR. Video or camera: write the analysed "
            "frames, annotated, to this video file (.avi, .mkv: MJPG; .mp4, .mov: mp4v).",
        ),
    ] = None,
    normalize: Annotated[
        Normalization, typer.Option(help="Pixel scaling the model expects (see `evaluate --help`).")
    ] = "raw",
    tta: TtaOption = "none",
    camera: Annotated[
        int | None, typer.Option(metavar="INDEX", min=0, help="Analyse this live camera (0: the first).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Video or camera: write the table of faces (.csv or .json)."),
    ] = None,
    every: Annotated[
        int, typer.Option(metavar="N", min=1, help="Video or camera: analyse every Nth frame.")
    ] = 1,
    frames: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="Video or camera: stop after this many frames read."),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Video or camera: show the annotated frames in a window.")
    ] = False,
    explain: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Images: write each face's Grad-CAM heat map of its top emotion into DIR "
            "(STEM-faceN-EMOTION.png; with --detect-faces also STEM-gradcam.png, the maps in their boxes).",
        ),
    ] = None,
    explain_class: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="With --explain: the map of this class instead of the top one."),
    ] = None,
) -> None:
    """Top-3 emotions with probabilities for each image, or for each face with --detect-faces; the
    emotions of every face in a video or a live camera.

    48x48 images are used as face crops as they are; others are converted to grayscale and resized.
    """
    import json

    from fertrain.predict import predict_images, split_model_and_images
    from fertrain.tables import predictions_table
    from fertrain.video import video_request

    if explain_class is not None and explain is None:
        raise typer.BadParameter("--explain-class needs --explain DIR")
    request = video_request(arguments or [], camera)
    if request is not None:
        if explain is not None:
            raise typer.BadParameter("--explain applies to images, not to a video or --camera")
        _predict_video(*request, json_output, annotate, normalize, tta, out, every, frames, show)
        return
    given = [
        name for name, value in zip(VIDEO_ONLY_OPTIONS, (out, every != 1, frames, show), strict=True) if value
    ]
    if given:
        raise typer.BadParameter(f"{', '.join(given)} apply to a video or --camera, not to images")
    if not arguments:
        raise typer.BadParameter("name images, a directory of images, a video or --camera INDEX")
    model, images = split_model_and_images(arguments)
    results = predict_images(
        model,
        images,
        detect=detect_faces,
        annotate_dir=annotate,
        normalize=normalize,
        tta=tta,
        explain_dir=explain,
        explain_class=explain_class,
    )
    if json_output:
        typer.echo(json.dumps([result.to_dict() for result in results]))
        return
    console.print(predictions_table(results, title=f"model: {model}"))


def _predict_video(
    model: Path,
    source: Path | int,
    json_output: bool,
    annotate: str | None,
    normalize: str,
    tta: str,
    out: str | None,
    every: int,
    frames: int | None,
    show: bool,
) -> None:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fertrain.tables import video_face_line, video_summary_table
    from fertrain.video import VideoOptions, Window, predict_camera, predict_video

    window = Window() if show else None
    live = isinstance(source, int)

    def on_frame(result, frame) -> None:
        if window is not None:
            window.show(result, frame)
        if live and not json_output:
            console.print(video_face_line(result), highlight=False, soft_wrap=True)

    options = VideoOptions(
        every=every,
        frames=frames,
        out=out,
        annotated=annotate,
        normalize=normalize,
        tta=tta,
        on_frame=on_frame,
    )
    try:
        if live:
            summary = predict_camera(model, source, options)
        else:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} frames/s"),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
                disable=not err_console.is_terminal,
            )
            task = bar.add_task(source.name, total=None, rate="-")

            def progress(done: int, total: int | None) -> None:
                speed = bar.tasks[0].speed
                bar.update(task, completed=done, total=total, rate="-" if speed is None else f"{speed:.1f}")

            with bar:
                summary = predict_video(model, source, options, progress)
    finally:
        if window is not None:
            window.close()
    if json_output:
        typer.echo(json.dumps(summary.to_dict()))
        return
    console.print(video_summary_table(summary, title=f"model: {model}"))
    for path in (summary.table, summary.annotated):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)
