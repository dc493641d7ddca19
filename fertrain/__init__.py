"""fertrain: train, evaluate and ship Xception-family facial-emotion classifiers on FER2013."""

__version__ = "0.1.0"
