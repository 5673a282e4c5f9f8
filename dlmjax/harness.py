"""lm-evaluation-harness (0.4.x) adapter: the model class "dlmjax" (docs/interop.md).

Importing this module registers the class with lm-eval; lm-eval has no plugin discovery, so make
it visible by importing it before evaluating, or run lm-eval through `tools/run_lm_eval.py`, which
does so (and adds this repository's tasks to --include_path):

    import dlmjax.harness, lm_eval
    lm_eval.simple_evaluate(model="dlmjax", model_args="workdir=runs/x", tasks=["dlmjax_kjv"],
                            task_manager=lm_eval.tasks.TaskManager(
                                include_path=dlmjax.harness.TASKS_DIR))

Requests map onto the diffusion bound (dlmjax.scoring): `loglikelihood` is −(ELBO) of the
continuation with BOS + context clean, `loglikelihood_rolling` the same over windows that
cover the text once, `generate_until` runs the run's sampler with the context as a clean prompt
and cuts at the stop strings. is_greedy means one denoising step from the prior recovers the
whole continuation by argmax. Model arguments (strings on the command line):

    workdir              run directory (its newest checkpoint, config, tokenizer, mesh)
    backend              a dlmjax.scoring.Backend instead of a workdir (Python only)
    method               "grid" (default) or "monte_carlo"
    grid_points          λ nodes of the grid (default: the run's eval.grid_points, else 32)
    num_samples          independent estimates averaged (grid default 1, Monte Carlo 128)
    samples_per_forward  estimates evaluated together in one batched forward (default 1)
    fill                 "none" (default: the window ends with the request) or "prior"
    rolling_context      tokens of context each later rolling window keeps at least (default 1)
    batch_size           requests per forward (default 8)
    seed                 noise seed (default 0)
    sampling_method, steps, temperature, block_size, max_gen_toks: generation overrides
"""

import os

from absl import logging
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from dlmjax import scoring

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness_tasks")
MC_DEFAULT_SAMPLES = 128


def _int_option(value, name, default):
    if value is None or value == "auto":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name}={value!r} is not an integer") from None


@register_model("dlmjax")
class DlmjaxLM(LM):
    """A dlmjax diffusion model behind lm-eval's three request types."""

    def __init__(self, workdir=None, backend=None, *, method="grid", grid_points=None,
                 num_samples=None, samples_per_forward=1, fill="none", rolling_context=1,
                 batch_size=8, seed=0, sampling_method=None, steps=None, temperature=None,
                 block_size=None, max_gen_toks=256, max_batch_size=None, device=None,
                 **unknown):
        super().__init__()
        del max_batch_size, device  # lm-eval passes them to every model; JAX places itself
        if unknown:
            raise ValueError(f"unknown model_args {sorted(unknown)} for model 'dlmjax'")
        if (workdir is None) == (backend is None):
            raise ValueError("model 'dlmjax' needs exactly one of workdir=... or backend=...")
        run = None
        if backend is None:
            backend, run = scoring.backend_from_workdir(workdir)
        if backend.tokenizer is None:
            raise ValueError("model 'dlmjax': the model has no tokenizer (synthetic data?); "
                             "lm-eval requests are text")
        if method not in scoring.METHODS:
            raise ValueError(f"model_args method={method!r}; expected one of {scoring.METHODS}")
        self.backend = backend
        default_points = run.config.eval.grid_points if run is not None else 32
        default_samples = MC_DEFAULT_SAMPLES if method == "monte_carlo" else 1
        self.options = dict(method=method,
                            num_points=_int_option(grid_points, "grid_points", default_points),
                            num_samples=_int_option(num_samples, "num_samples", default_samples),
                            samples_per_forward=_int_option(samples_per_forward,
                                                            "samples_per_forward", 1),
                            fill=fill, batch_size=_int_option(batch_size, "batch_size", 8),
                            seed=_int_option(seed, "seed", 0))
        self.rolling_context = _int_option(rolling_context, "rolling_context", 1)
        self.generation = dict(method=sampling_method, num_steps=steps, temperature=temperature,
                               block_size=block_size)
        self.max_gen_toks = _int_option(max_gen_toks, "max_gen_toks", 256)

    # --------------------------------------------------------------------------- text ↔ ids

    def _encode(self, text):
        return self.backend.tokenizer.encode(text, add_special_tokens=False).ids

    def _decode(self, ids):
        from dlmjax.data import tokenizer as tok_lib

        if scoring.EOS_ID in ids:
            ids = ids[:ids.index(scoring.EOS_ID)]
        return tok_lib.decode(self.backend.tokenizer, ids)

    def _split(self, context, continuation):
        """(prompt ids, continuation ids), tokenised together so merges across the seam match
        how the text tokenises as a whole; the context is cut from the left to fit."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:  # a trailing space belongs to the continuation's first token
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        cut = len(self._encode(context)) if context else 0
        prompt, target = whole[:cut], whole[cut:]
        if not target:
            raise ValueError(f"continuation {continuation!r} has no tokens of its own")
        room = self.backend.seq_len - 1 - len(target)
        if room < 0:
            raise ValueError(f"a continuation of {len(target)} tokens does not fit "
                             f"model.seq_len={self.backend.seq_len}")
        return [scoring.BOS_ID] + prompt[max(0, len(prompt) - room):], target

    def _score(self, pairs, desc):
        with tqdm(total=len(pairs), desc=desc, unit="req", disable=len(pairs) < 2) as bar:
            return scoring.score(self.backend, pairs, progress=bar.update, **self.options)

    # ------------------------------------------------------------------------- lm-eval API

    def loglikelihood(self, requests):
        pairs = [self._split(*req.args) for req in requests]
        scores = self._score(pairs, "dlmjax loglikelihood")
        out = []
        for req, s in zip(requests, scores):
            result = (-s.nats, s.greedy)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests):
        windows, owner = [], []
        for index, req in enumerate(requests):
            ids = self._encode(req.args[0])
            for pair in scoring.rolling_windows(ids, self.backend.seq_len,
                                                context=self.rolling_context):
                windows.append(pair)
                owner.append(index)
        scores = self._score(windows, "dlmjax rolling")
        totals = [0.0] * len(requests)
        for index, s in zip(owner, scores):
            totals[index] -= s.nats
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests):
        groups = {}
        for index, req in enumerate(requests):
            context, gen_kwargs = req.args
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append((index, context))
        out = [None] * len(requests)
        batch = self.options["batch_size"]
        for _, members in groups.items():
            gen_kwargs = dict(requests[members[0][0]].args[1])
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            overrides = dict(self.generation)
            if "temperature" in gen_kwargs and overrides["temperature"] is None:
                overrides["temperature"] = float(gen_kwargs.pop("temperature"))
            ignored = sorted(set(gen_kwargs) - {"do_sample"})
            if ignored:
                logging.warning("dlmjax generate_until ignores gen_kwargs %s", ignored)
            for start in range(0, len(members), batch):
                chunk = members[start:start + batch]
                room = self.backend.seq_len - min(max_new, self.backend.seq_len - 2)
                prompts = [[scoring.BOS_ID] + self._encode(c)[-(room - 1):] for _, c in chunk]
                generated = scoring.generate(self.backend, prompts, max_new,
                                             seed=self.options["seed"] + start, **overrides)
                for (index, _), ids in zip(chunk, generated):
                    text = self._decode(ids)
                    for stop in until:
                        text = text.split(stop)[0]
                    out[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return out
