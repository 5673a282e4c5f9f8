"""The embedded default corpus: the public-domain King James Bible, one chapter per document.

Shipped inside the package so the suite trains and tests with no download. The held-out split is
fixed (the last 5% of chapters, i.e. most of Revelation and the late epistles) so every run on
every machine evaluates on the same text.
"""

from __future__ import annotations

import gzip
import importlib.resources

NUM_CHAPTERS = 1189
HELDOUT_FRACTION = 0.05
NUM_HELDOUT_CHAPTERS = round(HELDOUT_FRACTION * NUM_CHAPTERS)  # 59
SPLITS = ("train", "heldout")


def kjv_chapters(split: str) -> list[str]:
    """The chapters of `split` ("train": first 1130, "heldout": last 59), in canonical order."""
    if split not in SPLITS:
        raise ValueError(f"kjv split {split!r} must be one of {SPLITS}")
    asset = importlib.resources.files("dlmjax.data").joinpath("assets/kjv_chapters.txt.gz")
    with asset.open("rb") as f:
        chapters = gzip.decompress(f.read()).decode("utf-8").splitlines()
    if len(chapters) != NUM_CHAPTERS:
        raise ValueError(f"kjv asset has {len(chapters)} chapters, expected {NUM_CHAPTERS}")
    cut = NUM_CHAPTERS - NUM_HELDOUT_CHAPTERS
    return chapters[:cut] if split == "train" else chapters[cut:]
