"""Peak RSS of the training pipeline over a shard set (run as a script by test_data.py).

  python tests/pipeline_rss.py FORMAT GLOB NUM_BATCHES  ->  prints {"peak_rss_bytes": ...}

After the imports, the kernel's peak-RSS mark is reset (/proc/self/clear_refs), so the peak
reported is that of building the pipeline and reading NUM_BATCHES shuffled batches of
8 x 2048 tokens, which touch row groups / records all over the shard set.
"""

import json
import sys

import grain  # noqa: F401 - imported before the reset: its import peak is not the pipeline's
import numpy as np  # noqa: F401
import pyarrow.parquet  # noqa: F401

from dlmjax import data
from dlmjax.data import pipeline  # noqa: F401


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(shard_format, pattern, num_batches):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    baseline = _peak_rss_bytes()
    cfg = data.default_data_config()
    cfg.update(source="tokenized", paths=(pattern,), vocab_size=1024, record_length=2048,
               token_dtype="uint16")
    it = data.make_train_iterator(cfg, seq_len=2048, batch_size=8, seed=0)
    setup = _peak_rss_bytes()
    total = 0
    for _ in range(num_batches):
        total += int(next(it)["tokens"].sum())
    print(json.dumps({"format": shard_format, "baseline_rss_bytes": baseline,
                      "setup_rss_bytes": setup,
                      "peak_rss_bytes": _peak_rss_bytes(), "checksum": total}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
