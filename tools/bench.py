"""`make bench`: speed and memory ratios, each measured within this one process."""

import json

from absl import app

from dlmjax import benchmarks


def main(argv):
    del argv
    for name, fn in benchmarks.BENCHMARKS.items():
        print(f"== {name}", flush=True)
        print(json.dumps(fn(), indent=2), flush=True)


if __name__ == "__main__":
    app.run(main)
