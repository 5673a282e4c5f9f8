"""A directory in the released format → a dlmjax run directory (docs/interop.md).

The run directory gets what training would have left there: `config.json` (the experiment
config: the base experiment's data/train/eval settings with every forward key from the
checkpoint's config.json), `tokenizer.json`, and an orbax checkpoint at step 0 holding the
whole train state (parameters, a fresh optimizer state, step, RNG), laid out like training's,
so `--mode=eval`, `--mode=sample` and further training (from step 0) work on it.
`hf_import.json` records where it came from and which keys took the released defaults.
"""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dlmjax import checkpoint, fs, parallel, rundir, train
from dlmjax import config as config_lib
from dlmjax import model as model_lib
from dlmjax.hf import format as format_lib
from dlmjax.hf import generation, safetensors_io, state_dict, tokenizer_files

REPORT_FILE = "hf_import.json"
TOKENIZER_FILE = "tokenizer.json"


def set_dotted(config, key, value):
    """config.a.b = value for key "a.b" (ConfigDict's own type checks apply)."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def _read_json(path):
    try:
        return json.loads(fs.read_text(path))
    except json.JSONDecodeError as e:
        raise format_lib.FormatError(f"{path}: not valid JSON ({e})") from None


def _refuse_used_workdir(workdir):
    ckpt = fs.join(workdir, rundir.CHECKPOINT_DIR)
    if fs.isfile(rundir.config_path(workdir)) or fs.listdir(ckpt):
        raise FileExistsError(f"{workdir} already holds a run (config.json or checkpoints); "
                              f"import into a new directory")


def experiment_config(source, base_config, *, name=None):
    """(config, report): the experiment config of the imported run, and what the import did."""
    config_path = fs.join(source, "config.json")
    if not fs.isfile(config_path):
        raise FileNotFoundError(f"{config_path}: no such file; is {source} a checkpoint "
                                f"directory in the released format?")
    hf = _read_json(config_path)
    overrides, defaulted, tied = format_lib.experiment_overrides(hf, where=config_path)
    gen_path = fs.join(source, generation.FILE)
    if fs.isfile(gen_path):
        overrides.update(generation.sample_overrides(_read_json(gen_path),
                                                     overrides["model.seq_len"], where=gen_path))
    config = copy.deepcopy(base_config)
    config.name = name or fs.path(source).name or "imported"
    config.objective = "diffusion"
    for key, value in overrides.items():
        set_dotted(config, key, value)
    if not config.train.steps and not config.train.tokens:
        config.train.steps = 1  # derive needs a training length; set train.steps to fine-tune
    report = {"source": fs.absolute(source), "defaulted_keys": defaulted,
              "tie_word_embeddings": tied, "noise_type": hf.get("noise_type", 0.0),
              "renamed_special_tokens": {}}
    return config, report, tied


def _place(params_np, shardings):
    def put(host, sharding):
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, params_np, shardings)


def _check_tree(params_np, run):
    abstract = model_lib.abstract_params(run.model)
    want = jax.tree.map(lambda a: (a.shape, str(a.dtype)), abstract)
    got = jax.tree.map(lambda a: (a.shape, str(a.dtype)), params_np)
    if want != got:
        raise format_lib.FormatError(f"converted parameters do not match the model: {got} vs "
                                     f"{want}")


def write_state(run, workdir, params_np):
    """Saves {params, fresh optimizer state, step 0, rng} as training's checkpoint step 0."""
    mesh = parallel.make_mesh(**{k: run.mesh_shape[k] for k in ("data", "fsdp", "tensor")})
    optimizer = train.make_optimizer(run)
    shardings = train.Shardings(run, mesh, optimizer)
    params = _place(params_np, shardings.params)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.state["opt_state"])(params)
    state = {"params": params, "opt_state": opt_state,
             "step": jax.device_put(jnp.zeros([], jnp.int32), shardings.replicated),
             "rng": jax.device_put(jax.random.key_data(jax.random.key(run.config.seed)),
                                   shardings.replicated)}
    manager = checkpoint.make_manager(fs.join(fs.absolute(workdir), rundir.CHECKPOINT_DIR),
                                      keep=run.config.train.keep_checkpoints)
    checkpoint.save(manager, 0, state, force=True)
    checkpoint.finish(manager)  # waits, then records the checksums
    manager.close()


def import_checkpoint(source, workdir, base_config, *, name=None):
    """Imports `source` (local or gs://) into the new run directory `workdir`; returns the
    report written to workdir/hf_import.json."""
    _refuse_used_workdir(workdir)
    config, report, tied = experiment_config(source, base_config, name=name)
    tokenizer_text = None
    tok_path = fs.join(source, TOKENIZER_FILE)
    if fs.isfile(tok_path):
        tokenizer_text, renamed = tokenizer_files.import_tokenizer(fs.read_text(tok_path),
                                                                  where=tok_path)
        report["renamed_special_tokens"] = renamed
        config.data.tokenizer = fs.join(fs.absolute(workdir), TOKENIZER_FILE)
    else:
        logging.warning("%s has no %s; the run keeps data.tokenizer=%r", source,
                        TOKENIZER_FILE, config.data.tokenizer)
    run = config_lib.derive(config, jax.device_count())
    tensors = safetensors_io.read(source)
    params_np = state_dict.from_state_dict(tensors, run.model, tied=tied,
                                           dtype=np.dtype(run.model.param_dtype))
    _check_tree(params_np, run)
    del tensors
    fs.makedirs(workdir)
    if jax.process_index() == 0 and tokenizer_text is not None:
        fs.write_text_atomic(fs.join(workdir, TOKENIZER_FILE), tokenizer_text)
    write_state(run, workdir, params_np)
    if jax.process_index() == 0:
        # config.json last: a directory without it is an unfinished import, refused next time.
        fs.write_text_atomic(fs.join(workdir, REPORT_FILE), json.dumps(report, indent=2) + "\n")
        fs.write_text_atomic(rundir.config_path(workdir), config.to_json(indent=2))
    if tied:
        logging.warning("tie_word_embeddings=true: the head starts as a copy of the embedding; "
                        "further training updates the two separately")
    logging.info("imported %s into %s (%d parameters)", source, workdir,
                 sum(a.size for a in jax.tree.leaves(params_np)))
    return report
