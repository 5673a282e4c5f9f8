"""Entry point: python -m dlmjax.main --config=experiments/X.py [--config.key=value ...].

`cli(argv)` runs one command and returns its exit code (dlmjax/errors.py: 2 bad input, 1 machine
failure, 3 lost process); every config value and flag is validated before jax starts.

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

from dlmjax import errors, validate
from dlmjax.errors import InputError

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
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", 30, "Seconds to wait for every process to reach the coordinator.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 20, "Seconds of silence after which a process counts as lost (exit 3).")
_DEBUG = flags.DEFINE_bool("debug", False, "Print the full traceback of an error.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "train: resume although the config differs from the run's "
    "config.json beyond steps/cadences/sampling/mesh/logging (the change is recorded); "
    "eval: evaluate under another noise type or objective than the run was trained with.")
_DESCRIBE_DEVICES = flags.DEFINE_integer(
    "describe_devices", 0, "describe: devices of the target mesh (0 = config mesh.num_devices).")


def _fake_devices_for_describe(config, argv):
    """On CPU, re-runs this command with as many fake host devices as the target mesh needs."""
    wanted = _DESCRIBE_DEVICES.value or config.mesh.num_devices
    flag = f"--xla_force_host_platform_device_count={wanted}"
    if not wanted or flag in os.environ.get("XLA_FLAGS", ""):
        return
    import jax

    if jax.default_backend() != "cpu" or jax.device_count() == wanted:
        return
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
    os.execve(sys.executable, [sys.executable, "-m", "dlmjax.main", *argv[1:]], env)


def _distributed_flags():
    from dlmjax import distributed

    return distributed.check_flags(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                   _DISTRIBUTED.value, _INIT_TIMEOUT.value,
                                   _HEARTBEAT_TIMEOUT.value)


def _initialize_distributed():
    from dlmjax import distributed

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           init_timeout=_INIT_TIMEOUT.value,
                           heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)


def _load_config(argv):
    """The experiment config; InputError naming --config when its file cannot be loaded."""
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path):
        raise InputError(f"--config: {path}: no such file")
    try:
        config = _CONFIG.value
    except Exception as e:  # noqa: BLE001 - whatever the experiment file raised
        raise _config_load_error(argv, e) from e
    if config is None:
        raise InputError("--config: required (--config=experiments/<name>.py, or the --workdir "
                         "of a run, which holds its config.json)")
    return config


def _require_workdir():
    if not _WORKDIR.value:
        raise InputError(f"--workdir: required for --mode={_MODE.value}")
    return _WORKDIR.value


def _read_prompts():
    from dlmjax import fs

    prompts = list(_PROMPTS.value)
    path = _PROMPT_FILE.value
    if path:
        if not fs.isfile(path):
            raise InputError(f"--prompt_file: {path} does not exist")
        with errors.reading(path):
            prompts += [line for line in fs.read_text(path).splitlines() if line.strip()]
    return prompts


def _check_sample_inputs(config, workdir, prompts):
    """The tokenizer and prompts of --mode=sample, before any checkpoint is restored."""
    from dlmjax import data, fs

    if _NUM_SAMPLES.value < 1:
        raise InputError(f"--num_samples: must be >= 1, got {_NUM_SAMPLES.value}")
    recorded = fs.join(workdir, "tokenizer.json")
    where = recorded if fs.isfile(recorded) else f"data.tokenizer={config.data.tokenizer or 'kjv'}"
    with errors.reading(where):
        tokenizer = data.run_tokenizer(workdir, config.data)
    validate.check_tokenizer_vocab(tokenizer, config, where)
    if prompts:
        if tokenizer is None:
            raise InputError("--prompt: prompts need a tokenizer: set data.tokenizer (the run "
                             "recorded none)")
        validate.check_prompts([tokenizer.encode(p, add_special_tokens=False).ids
                                for p in prompts], config)


def _quiet_library_logs():
    """Keeps orbax's per-save INFO chatter out of the console; warnings still show."""
    import logging as py_logging

    class _DropOrbaxInfo(py_logging.Filter):
        def filter(self, record):
            return record.levelno >= py_logging.WARNING or not any(
                name in record.pathname for name in ("orbax", "fsspec", "gcsfs"))

    handler = logging.get_absl_handler()
    if not any(type(f).__name__ == "_DropOrbaxInfo" for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())


def main(argv, full_argv=None):
    _quiet_library_logs()
    if len(argv) > 1:
        raise InputError(f"{argv[1]}: unexpected argument")
    config = _load_config(full_argv or sys.argv)
    multi_process = _distributed_flags()
    prompts = []
    if _MODE.value != "describe":
        workdir = _require_workdir()
    if _MODE.value == "sample":
        prompts = _read_prompts()
    # First, before jax starts: every value, and the data (train, eval) or tokenizer (sample).
    validate.check_for_mode(config, _MODE.value)
    if _MODE.value == "sample":
        _check_sample_inputs(config, workdir, prompts)
    if _MODE.value == "describe":
        _fake_devices_for_describe(config, full_argv or sys.argv)
    if multi_process:
        _initialize_distributed()

    import jax

    from dlmjax import config as config_lib
    from dlmjax import describe

    run = config_lib.derive(config, jax.device_count())
    if _MODE.value == "describe":
        print(json.dumps(describe.describe(run), indent=2))
        return
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
        _sample(run, workdir, prompts)


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


def _sample(run, workdir, prompts):
    from dlmjax import evaluation

    params, step = evaluation.restore_params(run, workdir)
    texts = evaluation.sample_texts(params, run, num_samples=_NUM_SAMPLES.value,
                                    prompts=prompts, workdir=workdir)
    _print_samples(texts, evaluation.write_samples(workdir, texts, step))


def _print_samples(texts, path):
    for i, text in enumerate(texts):
        print(f"--- sample {i}\n{text}\n")
    print(f"(written to {path})")


def _unknown_override(error, argv):
    """The --config.* argument behind ml_collections' raw "Did you mean" error, if any."""
    match = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', str(error))
    words = match.groups()[::-1] if match else re.findall(r"\w+", str(error))[:1]
    if not words:
        return None
    for arg in argv[1:]:
        path = arg.split("=", 1)[0]
        if path.startswith("--config.") and words[0] in path.split(".")[1:]:
            hint = f'; did you mean "{words[1]}"?' if match else ""
            return f"{path}: unknown config key{hint}"
    return None


def _parse(argv):
    """The arguments absl leaves over; InputError for a bad flag or config override."""
    # cli() may run several times in one process (tests): forget the last run's overrides.
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    saved, sys.argv = sys.argv, argv  # ml_collections reads the overrides from sys.argv
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        raise InputError(str(e).replace("\n", " ")) from None
    except (AttributeError, KeyError) as e:
        # A typo in an override key surfaces from ml_collections as a raw lookup error.
        message = _unknown_override(e, argv)
        if message is None:
            raise _config_load_error(argv, e) from e
        raise InputError(message) from None
    except Exception as e:  # noqa: BLE001 - the experiment file raised while loading
        raise _config_load_error(argv, e) from e
    finally:
        sys.argv = saved


def _config_path(argv):
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    return given[-1].split(":", 1)[0] if given else None


def _config_load_error(argv, error):
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return InputError(f"--config: {_config_path(argv)}: cannot load: {errors.describe(root)[0]}")


def cli(argv) -> int:
    """Runs one command (argv[0] is the program name) and returns its exit code; errors are one
    line `error: <path or key>: <reason>` on stderr, with the traceback under --debug."""
    from dlmjax import rundir

    debug = "--debug" in argv
    try:
        argv = rundir.argv_with_run_config(list(argv))  # --workdir alone: the run's config.json
        rest = _parse(argv)
    except Exception as e:  # noqa: BLE001 - the boundary
        return errors.report(e, debug=debug)
    debug = _DEBUG.value

    def run():
        try:
            main(rest, full_argv=list(argv))
        except Exception as e:
            from dlmjax import distributed

            distributed.explain(e)  # a lost peer: exits 3 naming it, or raises PeerLostError
            raise

    return errors.guarded(run, debug=debug, where=_WORKDIR.value)


def run_main():
    app.define_help_flags()
    logging.use_absl_handler()
    sys.exit(cli(sys.argv))


if __name__ == "__main__":
    run_main()
