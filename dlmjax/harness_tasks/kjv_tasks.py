"""The dataset loader of the dlmjax_kjv tasks: reads kjv_heldout.jsonl beside this file, so the
tasks need neither the network nor a particular working directory."""

import json
import os

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kjv_heldout.jsonl")


def load(**kwargs):
    """lm-eval's custom_dataset hook (it passes the task metadata as keyword arguments)."""
    del kwargs
    import datasets

    with open(DATA, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
