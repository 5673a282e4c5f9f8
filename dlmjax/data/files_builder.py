"""A TFDS builder of our own: local text files -> ArrayRecord, read like any TFDS dataset.

Preparing once gives random access and the same reading path (tfds data source) as a catalogue
dataset; the dataset is re-prepared whenever the files change (the config name is a fingerprint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow_datasets as tfds

from dlmjax.data.files import files_fingerprint, read_documents


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
    """Prepares the files' ArrayRecord dataset (once; reused while the files are unchanged)."""
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
