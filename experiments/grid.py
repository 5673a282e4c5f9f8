"""Any point of the study's 510-run grid (docs/science.md), or a planned run, by its key:

  --config=experiments/grid.py:noise=uniform,size=L12-D768,batch=64,lr=0.3

Sizes L8-D512 … L20-D1536, five noise types, batches 8 … 512 sequences, 2–3 learning rates per
(size, batch) around η*; S = 2048, V = 131072, no cooldown (dlmjax.scaling.grid documents the
construction and the run lengths). Keys with tokens=, seq= or vocab= address runs outside the
study grid, such as those `tools/make_grid.py` plans for a new FLOP budget.
"""

from dlmjax import data
from dlmjax.scaling import grid
from experiments import base


def get_config(key=None):
    if not key:
        raise ValueError("experiments/grid.py needs a point: --config=experiments/grid.py:"
                         "noise=uniform,size=L12-D768,batch=64,lr=0.3")
    point = grid.parse_point(key)
    grid.grid_point(point.noise, point.size, point.batch, point.lr, tokens=point.tokens,
                    seq_len=point.seq_len, vocab_size=point.vocab_size,
                    in_study=point.tokens is None)  # validates a study key against the grid
    c = base.get_config()
    c.name = point.key
    for dotted, value in point.config_overrides().items():
        section, leaf = dotted.split(".")
        c[section][leaf] = value
    c.train.batch_size = point.batch
    # The study's pre-tokenised corpus (131,072-token vocabulary); --config.data.paths is required
    # for train and eval (README, "Data for the study"). No toy corpus is used by default.
    c.data = data.study_data_config()
    return c
