"""A run's experiment config as the trainer will build it: experiment file, point, overrides.

The plan needs the effective config (batch, heads, steps, model size) to fit a mesh and count
FLOPs. Overrides are written `config.KEY=VALUE`, as `--set` takes them, and reach the trainer
verbatim as `--config.KEY=VALUE`; here they are parsed by the type of the value they replace,
which is what ml_collections does on the trainer's command line.
"""

import ast
import importlib.util
import os
import sys

import ml_collections

DEFAULT_EXPERIMENT = "experiments/grid.py"
_PREFIX = "config."


def repo_root() -> str:
    """The checkout holding `experiments/` next to the dlmjax package (where the trainer runs)."""
    import dlmjax

    return os.path.dirname(os.path.dirname(os.path.abspath(dlmjax.__file__)))


def load(experiment: str, argument: str | None) -> ml_collections.ConfigDict:
    """get_config(argument) of an experiment file (relative paths: to the repository root)."""
    root = repo_root()
    path = experiment if os.path.isabs(experiment) else os.path.join(root, experiment)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {experiment} not found (looked at {path})")
    if root not in sys.path:  # experiment files import `experiments.base`
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_study_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(argument) if argument is not None else module.get_config()


def split_override(text: str) -> tuple[str, str]:
    """"config.data.source=kjv" -> ("data.source", "kjv"); ValueError when malformed."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith(_PREFIX) or len(name) == len(_PREFIX):
        raise ValueError(f"--set={text!r}: expected config.KEY=VALUE, e.g. "
                         "config.data.source=kjv")
    return name[len(_PREFIX):], value


def _parse_like(current, text: str, key: str):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config.{key}: {text!r} is not a boolean")
        return text.lower() in ("true", "1")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides):
    """(copy of `config` with `config.KEY=VALUE` overrides applied, problems).

    An override that cannot be applied here (unknown key, unparsable value) is left out and
    described in `problems`: the trainer is the judge, and will report it as a config error.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    problems = []
    for text in overrides:
        key, raw = split_override(text)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part] if part in node and isinstance(
                node[part], ml_collections.ConfigDict) else None
            if node is None:
                break
        if node is None or leaf not in node:
            problems.append(f"--set={text}: unknown config key config.{key}")
            continue
        try:
            node[leaf] = _parse_like(node[leaf], raw, key)
        except (TypeError, ValueError) as err:
            problems.append(f"--set={text}: {err}")
    return config, problems


def trainer_flags(overrides) -> list[str]:
    """`config.KEY=VALUE` -> `--config.KEY=VALUE`, the trainer's own override syntax."""
    return [f"--{text}" for text in overrides]
