"""FER2013 readers, the built-in demo dataset and in-memory prepared splits."""
from __future__ import annotations

# Standard FER2013 label order (fer2013.csv `emotion` column 0..6).
CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# FER2013 `Usage` column -> our split names.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
IMAGE_SIZE = 48
