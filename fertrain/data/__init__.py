"""FER2013 in every form users have it, turned into one validated, fast-loading dataset."""

from fertrain.data.dataset import SPLITS, load_manifest, load_split

__all__ = ["SPLITS", "load_manifest", "load_split"]
