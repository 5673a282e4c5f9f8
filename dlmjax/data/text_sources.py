"""Text sources as random-access documents: the embedded KJV, TFDS datasets, your files.

Each gives (documents, a map from a record to its text, a description that identifies the
documents in cache keys) for the train or held-out part; packing.py tokenises them into a stream.
"""

from __future__ import annotations

from dlmjax import fs
from dlmjax.data import files as files_lib
from dlmjax.data import kjv

TRAIN, EVAL = "train", "eval"



class TextField:
    """Grain map from a source record to its text ("" = the record is the text; "a/b" = nested)."""

    def __init__(self, field: str):
        self.field = field

    def __call__(self, record) -> str:
        for key in self.field.split("/") if self.field else ():
            if not isinstance(record, dict) or key not in record:
                have = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"data.text_field={self.field!r}: no {key!r} in a record (has {have})"
                )
            record = record[key]
        return record.decode("utf-8") if isinstance(record, bytes) else str(record)


class DocRange:
    """Documents [start, stop) of a random-access source (carves held-out documents off)."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.source[self.start + index]

    def __repr__(self) -> str:
        return f"DocRange({self.source!r}, {self.start}, {self.stop})"


def heldout_cut(num_items: int, fraction: float, what: str) -> int:
    """Index where the held-out tail starts: the last `fraction` of the items (at least one)."""
    if not 0 < fraction < 1:
        raise ValueError(f"data.heldout_fraction={fraction} must be in (0, 1)")
    if num_items < 2:
        raise ValueError(f"{what} has {num_items} items: too few to hold any out")
    return num_items - max(1, round(fraction * num_items))


def _open_tfds(data_cfg, split: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            data_cfg.tfds_name, split=split, data_dir=data_cfg.data_dir or None, download=False
        )
    except Exception as e:  # tfds raises several unrelated types for "not there"
        raise ValueError(
            f"data.tfds_name={data_cfg.tfds_name!r} split {split!r} cannot be opened from data_dir "
            f"{data_cfg.data_dir or '(tfds default)'!r}; it must be prepared beforehand with "
            f"file_format=array_record or parquet (no download happens here). Cause: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def text_docs(data_cfg, part: str):
    """(documents, text extractor, cache description) of the train or held-out part."""
    source = data_cfg.source
    if source == "kjv":
        split = "train" if part == TRAIN else "heldout"
        return kjv.kjv_chapters(split), TextField(""), {"source": "kjv", "split": split}
    if source == "tfds":
        if not data_cfg.tfds_name:
            raise ValueError("data.tfds_name must be set for data.source='tfds'")
        description = {
            "source": "tfds",
            "name": data_cfg.tfds_name,
            "data_dir": fs.absolute(data_cfg.data_dir) if data_cfg.data_dir else "",
            "text_field": data_cfg.text_field,
        }
        if data_cfg.eval_split:
            split = data_cfg.train_split if part == TRAIN else data_cfg.eval_split
            docs = _open_tfds(data_cfg, split)
            return (
                docs,
                TextField(data_cfg.text_field),
                {**description, "split": split, "num_docs": len(docs)},
            )
        docs = _open_tfds(data_cfg, data_cfg.train_split)
        description["split"] = data_cfg.train_split
    elif source == "files":
        train_files = files_lib.expand_paths(data_cfg.paths, "data.paths")
        eval_files = (
            files_lib.expand_paths(data_cfg.eval_paths, "data.eval_paths")
            if files_lib.as_path_list(data_cfg.eval_paths)
            else []
        )
        from dlmjax.data import files_builder

        builder = files_builder.prepare_local_files(
            train_files, eval_files, data_cfg.text_field, data_cfg.data_dir
        )
        description = {"source": "files", "dataset": builder.builder_config.name}
        if eval_files:
            split = "train" if part == TRAIN else "eval"
            return (
                builder.as_data_source(split=split),
                TextField("text"),
                {**description, "split": split},
            )
        docs = builder.as_data_source(split="train")
        description["split"] = "train"
    else:
        raise ValueError(f"data.source={source!r} is not a text source")
    cut = heldout_cut(len(docs), data_cfg.heldout_fraction, f"data source {description}")
    start, stop = (0, cut) if part == TRAIN else (cut, len(docs))
    text_field = data_cfg.text_field if source == "tfds" else "text"
    return (
        DocRange(docs, start, stop),
        TextField(text_field),
        {**description, "range": [start, stop]},
    )
