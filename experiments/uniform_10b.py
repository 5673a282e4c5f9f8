"""The study's 10B uniform-diffusion run (docs/science.md): L34-D4608, 36 heads of 128, P = 8.666B.

3072 sequences of 2048 tokens for 29,000 steps = 182B tokens, C = M·D ≈ 1.0e22 FLOPs, 20%
cooldown. Its learning rate is not published; the study's law η* = 10^−2.06·B^0.3412 with
B = 3072·2048 = 6,291,456 tokens gives η = 1.82.
"""

from dlmjax import data
from experiments import base


def get_config():
    c = base.get_config()
    c.name = "uniform_10b"
    c.noise.type = "uniform"
    c.model.num_layers = 34
    c.model.d_model = 4608
    c.model.num_heads = 36
    c.model.attention = "blockwise"  # no [B, H, S, S] scores: the largest temporary otherwise
    c.train.batch_size = 3072
    c.train.microbatches = 12  # 4 sequences per device per pass on the 64-device mesh below
    c.train.steps = 29_000
    c.train.checkpoint_every = 500
    c.train.eval_every = 1000
    c.optim.lr = 1.82
    c.optim.cooldown_fraction = 0.2
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.num_devices = 64
    # The study's pre-tokenised corpus (131,072-token vocabulary); --config.data.paths is required
    # for train and eval (README, "Data for the study"). No toy corpus is used by default.
    c.data = data.study_data_config()
    return c
