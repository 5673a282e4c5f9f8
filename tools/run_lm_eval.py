"""lm-evaluation-harness's command line with the "dlmjax" model registered and this
repository's tasks on the include path (lm-eval has no plugin discovery of its own).

  python tools/run_lm_eval.py run --model dlmjax --model_args workdir=runs/gidd-unif-3b \
      --tasks dlmjax_kjv --batch_size 8 --output_path results/
  python tools/run_lm_eval.py run --model dlmjax \
      --model_args workdir=runs/x,method=monte_carlo,num_samples=128 --tasks lambada_openai
  python tools/run_lm_eval.py ls tasks

Every argument is lm-eval's own (`python tools/run_lm_eval.py run --help`); the model arguments
of "dlmjax" are listed in dlmjax/harness.py. Tasks that lm-eval downloads need the network
(or a filled HuggingFace cache with HF_DATASETS_OFFLINE=1); the dlmjax_kjv tasks never do.
"""

import sys


def main():
    from lm_eval.__main__ import cli_evaluate

    import dlmjax.harness  # registers the model "dlmjax"

    argv = sys.argv[1:]
    wants_tasks = (argv[:1] in (["run"], ["ls"], ["validate"])
                   or any(a.startswith("--") for a in argv)) and "--help" not in argv
    if wants_tasks and not any(a.startswith("--include_path") for a in argv):
        argv += ["--include_path", dlmjax.harness.TASKS_DIR]
    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
