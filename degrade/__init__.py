"""degrade: a GPU data engine for low-quality face recognition.

Paired HQ/LQ faces from recipes of batched, per-sample-keyed degradations, written as Arrow
datasets or streamed into training.
"""

__version__ = "0.4.0"
