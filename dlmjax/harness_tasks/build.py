"""Rebuilds kjv_heldout.jsonl, the data of the dlmjax_kjv tasks, from the shipped KJV held-out
chapters (so the tasks never test text a KJV model trained on):

    python -m dlmjax.harness_tasks.build

Each line is one held-out sentence: `context` (all but its last word), `choices` (its last
word and the last words of three other sentences, shuffled), `label`, `prefix` / `answer`
(all but / its last two words) and `text` (the sentence).
"""

import json
import os
import random
import re

from dlmjax.data import kjv

NUM_SENTENCES = 24
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kjv_heldout.jsonl")


def sentences():
    for chapter in kjv.kjv_chapters("heldout"):
        for sentence in re.split(r"(?<=[.?!])\s+", chapter):
            words = sentence.rstrip(".?!").split()
            if 8 <= len(words) <= 30 and all(w.isalpha() for w in words[-2:]):
                yield " ".join(words)


def build(seed=0):
    rng = random.Random(seed)
    picked = list(sentences())[::7][:NUM_SENTENCES]
    last_words = sorted({s.split()[-1] for s in picked})
    docs = []
    for sentence in picked:
        words = sentence.split()
        others = rng.sample([w for w in last_words if w != words[-1]], 3)
        choices = [words[-1], *others]
        rng.shuffle(choices)
        docs.append({"context": " ".join(words[:-1]), "choices": [f" {c}" for c in choices],
                     "label": choices.index(words[-1]), "prefix": " ".join(words[:-2]),
                     "answer": " " + " ".join(words[-2:]), "text": sentence + "."})
    return docs


if __name__ == "__main__":
    with open(OUTPUT, "w") as f:
        for doc in build():
            f.write(json.dumps(doc) + "\n")
    print(f"wrote {OUTPUT}")
