"""The embedded default (`make train`): a small masked-diffusion model on the King James Bible.

Runs offline on a laptop CPU (2 cores: about 6.5 minutes) with the shipped corpus and its
4096-token BPE, so samples are mostly whole words even from a small model.
"""

from experiments import base


def get_config():
    c = base.get_config()
    c.name = "tiny_cpu"
    c.noise.type = "masked"
    c.model.vocab_size = 4096
    c.model.num_layers = 4
    c.model.d_model = 192  # 3 heads of 64
    c.model.seq_len = 128
    c.model.dtype = "float32"  # bfloat16 is not faster on CPUs
    c.model.remat = "none"
    c.train.batch_size = 32
    c.train.steps = 400
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.eval_batches = 4
    c.train.checkpoint_every = 100
    c.sample.steps = 128
    c.optim.warmup_steps = 30
    c.optim.cooldown_fraction = 0.2
    c.data.source = "kjv"
    return c
