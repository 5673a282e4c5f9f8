"""The study's 3B masked-diffusion run (docs/science.md): L18-D3072, 24 heads, 1536 × 2048 tokens
per step for 23,500 steps (74B tokens), 20% cooldown; reported ELBO 2.422, PPL 11.3.

η from the law η* = 10^−2.06·B^0.3412 at B = 1536·2048 = 3,145,728 tokens: 1.44.
"""

from dlmjax import data
from experiments import base


def get_config():
    c = base.get_config()
    c.name = "masked_3b"
    c.noise.type = "masked"
    c.model.num_layers = 18
    c.model.d_model = 3072
    c.model.num_heads = 24
    c.train.batch_size = 1536
    c.train.microbatches = 6
    c.train.steps = 23_500
    c.train.checkpoint_every = 500
    c.optim.lr = 1.44
    c.optim.cooldown_fraction = 0.2
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.num_devices = 64
    # The study's pre-tokenised corpus (131,072-token vocabulary); --config.data.paths is required
    # for train and eval (README, "Data for the study"). No toy corpus is used by default.
    c.data = data.study_data_config()
    return c
