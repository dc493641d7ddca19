"""`fertrain train` in one place: the loop that fits a model into a resumable run directory (`loop`),
its input batches and mixup/CutMix (`batches`, `augmentation`), the augmentation layers run inside the
training step (`augmentation`), optimizers and learning-rate schedules (`schedules`), the resumable
callbacks (`callbacks`), device and precision choices (`runtime`) and progress display (`progress`).
"""

from fertrain.training.loop import TrainingResult, compile_trainer, read_history, read_run_config, train

__all__ = ["TrainingResult", "compile_trainer", "read_history", "read_run_config", "train"]
