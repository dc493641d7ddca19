"""The `fertrain` console script: silences TensorFlow's start-up chatter, then runs the CLI.

TensorFlow 2.21 writes its C++ start-up lines (oneDNN, CUDA probing) through absl before any log level
applies, straight to file descriptor 2. Users read stderr for fertrain's one-line errors, so those lines
are captured while Keras loads and replayed only if the import itself fails.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _import_keras_quietly() -> None:
    # After the import, TF_CPP_MIN_LOG_LEVEL does apply; 3 keeps CUDA probing errors on CPU hosts quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _needs_keras(argv: list[str]) -> bool:
    # `prepare`, `--help` and `--version` never touch Keras; importing it costs about 5 s of start-up.
    words = [arg for arg in argv if not arg.startswith("-")]
    return bool(words) and words[0] != "prepare" and "--help" not in argv


def main() -> None:
    if _needs_keras(sys.argv[1:]):
        _import_keras_quietly()
    from fertrain.cli import main as run_cli

    run_cli()
