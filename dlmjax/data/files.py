"""Bring-your-own corpus: local text files turned into a TFDS ArrayRecord dataset.

Supported inputs: plain text (one document per line), JSONL (one object per line with a text
field) and parquet (a text column); .txt/.jsonl may be gzipped. Preparing once into ArrayRecord
gives random access and the same reading path as any TFDS dataset.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def as_path_list(paths: str | Sequence[str]) -> list[str]:
  """Accepts a comma-separated string or a sequence (configs from the command line give strings)."""
  if isinstance(paths, str):
    return [p.strip() for p in paths.split(",") if p.strip()]
  return [str(p) for p in paths]


def expand_paths(paths: str | Sequence[str], key: str) -> list[str]:
  """Expands globs to a sorted file list; ValueError naming `key` for no match or empty files."""
  patterns = as_path_list(paths)
  if not patterns:
    raise ValueError(f"{key} is empty: give files or globs")
  files = []
  for pattern in patterns:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise ValueError(f"{key}: {pattern!r} matches no file")
    files.extend(matched)
  for f in files:
    if not os.path.isfile(f):
      raise ValueError(f"{key}: {f!r} is not a file")
    if os.path.getsize(f) == 0:
      raise ValueError(f"{key}: {f!r} is empty")
  return files


def _open_text(path: str):
  return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(
      path, encoding="utf-8"
  )


def read_documents(path: str, text_field: str) -> Iterator[str]:
  """Yields the non-empty documents of one file, in file order."""
  if path.endswith(PARQUET_SUFFIXES):
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if text_field not in schema.names:
      raise ValueError(f"{path}: no column data.text_field={text_field!r} (has {schema.names})")
    for doc in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist():
      if doc:
        yield doc
  elif path.endswith(JSONL_SUFFIXES):
    with _open_text(path) as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          doc = json.loads(line)[text_field]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(
              f"{path}:{line_no}: expected a JSON object with data.text_field={text_field!r}"
          ) from e
        if doc:
          yield doc
  elif path.endswith(TEXT_SUFFIXES):
    with _open_text(path) as f:
      for line in f:
        doc = line.rstrip("\n")
        if doc:
          yield doc
  else:
    raise ValueError(
        f"{path}: unknown file type; use {TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES}"
    )


def files_fingerprint(files: Sequence[str], text_field: str) -> str:
  """Changes whenever a file is added, removed, rewritten or read through another field."""
  h = hashlib.sha256(text_field.encode())
  for f in files:
    st = os.stat(f)
    h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


@dataclasses.dataclass
class LocalTextFilesConfig(tfds.core.BuilderConfig):
  train_files: tuple[str, ...] = ()
  eval_files: tuple[str, ...] = ()
  text_field: str = "text"


class LocalTextFiles(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over local files; one config (named by a fingerprint) per set of files.

  Splits: "train" from the train files and, when eval files are given, "eval".
  """

  VERSION = tfds.core.Version("1.0.0")
  # Nothing is downloaded, so there is no checksums file to locate; resolving the code path of a
  # builder inside a package also needs `importlib_resources`, which tfds does not install.
  code_path = None

  def __init__(self, *, config: LocalTextFilesConfig, data_dir: str | None = None):
    super().__init__(config=config, data_dir=data_dir, file_format="array_record")

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: dataset_info_from_configs needs the builder to live in its own package.
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    splits = {"train": self._generate_examples(self.builder_config.train_files)}
    if self.builder_config.eval_files:
      splits["eval"] = self._generate_examples(self.builder_config.eval_files)
    return splits

  def _generate_examples(self, files):
    for file_index, path in enumerate(files):
      for doc_index, doc in enumerate(read_documents(path, self.builder_config.text_field)):
        yield f"{file_index}:{doc_index}", {"text": doc}


def prepare_local_files(
    train_files: Sequence[str], eval_files: Sequence[str], text_field: str, data_dir: str | None
) -> LocalTextFiles:
  """Prepares (once; reused while the files are unchanged) the ArrayRecord dataset of the files."""
  name = "f" + files_fingerprint(list(train_files) + list(eval_files), text_field)
  config = LocalTextFilesConfig(
      name=name,
      train_files=tuple(train_files),
      eval_files=tuple(eval_files),
      text_field=text_field,
  )
  builder = LocalTextFiles(config=config, data_dir=data_dir or None)
  builder.download_and_prepare()
  for split, info in builder.info.splits.items():
    if info.num_examples == 0:
      raise ValueError(f"data files for split {split!r} contain no non-empty document")
  return builder
