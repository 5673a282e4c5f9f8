"""Entry point: python -m dlmjax.main --config=experiments/X.py [--config.key=value ...].

Modes: train (default; resumes from the workdir's latest checkpoint), eval (held-out ELBO and
perplexity of the latest checkpoint), sample (texts from the latest checkpoint) and describe
(sizes, FLOPs and the compiled train step's per-device memory, without allocating anything).
"""

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file (experiments/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "describe"], "What to do.")
_PROMPTS = flags.DEFINE_multi_string("prompt", [], "sample: a prompt (repeatable).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "sample: file with one prompt per line.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "sample: texts per prompt (or in all).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (auto-detects pods).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs by hand.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "train: resume although the config differs from the run's "
    "config.json beyond steps/cadences/sampling/mesh/logging (the change is recorded); "
    "eval: evaluate under another noise type or objective than the run was trained with.")
_DESCRIBE_DEVICES = flags.DEFINE_integer(
    "describe_devices", 0, "describe: devices of the target mesh (0 = config mesh.num_devices).")


def _fake_devices_for_describe(config):
    """On CPU, re-runs this command with as many fake host devices as the target mesh needs."""
    wanted = _DESCRIBE_DEVICES.value or config.mesh.num_devices
    flag = f"--xla_force_host_platform_device_count={wanted}"
    if not wanted or flag in os.environ.get("XLA_FLAGS", ""):
        return
    import jax

    if jax.default_backend() != "cpu" or jax.device_count() == wanted:
        return
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
    os.execve(sys.executable, [sys.executable, "-m", "dlmjax.main", *sys.argv[1:]], env)


def _initialize_distributed():
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def _require_workdir():
    if not _WORKDIR.value:
        raise app.UsageError(f"--workdir is required for --mode={_MODE.value}")
    return _WORKDIR.value


def _quiet_library_logs():
    """Keeps orbax's per-save INFO chatter out of the console; warnings still show."""
    import logging as py_logging

    class _DropOrbaxInfo(py_logging.Filter):
        def filter(self, record):
            return record.levelno >= py_logging.WARNING or not any(
                name in record.pathname for name in ("orbax", "fsspec", "gcsfs"))

    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


def main(argv):
    _quiet_library_logs()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=experiments/<name>.py is required")
    if _MODE.value in ("train", "eval"):  # first, before jax starts: exits 2 on bad data
        from dlmjax import data

        data.validate_data_config(config.data, model_vocab_size=config.model.vocab_size,
                                  mode=_MODE.value)
    if _MODE.value == "describe":
        _fake_devices_for_describe(config)
    _initialize_distributed()

    import jax

    from dlmjax import config as config_lib
    from dlmjax import describe

    run = config_lib.derive(config, jax.device_count())
    if _MODE.value == "describe":
        print(json.dumps(describe.describe(run), indent=2))
        return
    workdir = _require_workdir()
    if _MODE.value == "train":
        _train(run, config, workdir)
        return
    from dlmjax import runlock

    runlock.check_unowned(workdir, _MODE.value)  # they write into the run directory too
    if _MODE.value == "eval":
        from dlmjax import evaluation

        print(json.dumps(evaluation.evaluate_checkpoint(
            run, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value), indent=2))
    elif _MODE.value == "sample":
        _sample(run, workdir)


def _train(run, config, workdir):
    import jax

    from dlmjax import fs, runlock

    fs.makedirs(workdir)
    if jax.process_index() != 0:
        return _train_owned(run, config, workdir)
    with runlock.held(workdir, "train"):  # before anything is written: one owner per run dir
        _train_owned(run, config, workdir)


def _train_owned(run, config, workdir):
    import jax

    from dlmjax import data, evaluation, rundir, train

    owner = jax.process_index() == 0
    # The tokenizer goes into workdir/tokenizer.json and its hash into config.json.
    config.data.tokenizer_sha256 = data.record_tokenizer(config.data, workdir, write=owner)
    rundir.claim_config(workdir, config, allow_change=_ALLOW_CONFIG_CHANGE.value, write=owner)
    state = train.train(run, workdir)
    step = int(state["step"])
    # Sampling gathers tokens to the host, which one process can do only for its own shards.
    if step == run.steps and config.sample.num_samples and jax.process_count() == 1:
        texts = evaluation.sample_texts(state["params"], run,
                                        num_samples=config.sample.num_samples, workdir=workdir)
        _print_samples(texts, evaluation.write_samples(workdir, texts, step))


def _sample(run, workdir):
    from dlmjax import evaluation, fs

    prompts = list(_PROMPTS.value)
    if _PROMPT_FILE.value:
        if not fs.isfile(_PROMPT_FILE.value):
            raise app.UsageError(f"--prompt_file {_PROMPT_FILE.value} does not exist")
        prompts += [line for line in fs.read_text(_PROMPT_FILE.value).splitlines() if line.strip()]
    params, step = evaluation.restore_params(run, workdir)
    texts = evaluation.sample_texts(params, run, num_samples=_NUM_SAMPLES.value,
                                    prompts=prompts, workdir=workdir)
    _print_samples(texts, evaluation.write_samples(workdir, texts, step))


def _print_samples(texts, path):
    for i, text in enumerate(texts):
        print(f"--- sample {i}\n{text}\n")
    print(f"(written to {path})")


def _unknown_override(error):
    """The --config.* argument behind ml_collections' raw "Did you mean" error, if any."""
    match = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', str(error))
    words = match.groups()[::-1] if match else re.findall(r"\w+", str(error))[:1]
    if not words:
        return None
    for arg in sys.argv[1:]:
        path = arg.split("=", 1)[0]
        if path.startswith("--config.") and words[0] in path.split(".")[1:]:
            hint = f' Did you mean "{words[1]}"?' if match else ""
            return f"unknown config key in {path}.{hint}"
    return None


def run_main():
    from dlmjax import rundir
    from dlmjax.config import ConfigError

    sys.argv = rundir.argv_with_run_config(sys.argv)  # --workdir alone: the run's config.json
    try:
        app.run(main)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ValueError) as e:
        # Bad input (missing files, corpus too small, ...): the message names it.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:
        # A typo in an override key surfaces from ml_collections as a raw lookup error.
        message = _unknown_override(e)
        if message is None:
            raise
        print(f"config error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_main()
