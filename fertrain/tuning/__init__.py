"""`fertrain tune`: hyperparameter search on Optuna whose trials are ordinary run directories: the
search space (`space`), the study and its workers (`study`), tune-report.html (`report`)."""

from fertrain.tuning.space import Param, SearchSpace, load_space
from fertrain.tuning.study import TrialRow, TuneReporter, TuneResult, trial_rows, tune

__all__ = [
    "Param",
    "SearchSpace",
    "TrialRow",
    "TuneReporter",
    "TuneResult",
    "load_space",
    "trial_rows",
    "tune",
]
