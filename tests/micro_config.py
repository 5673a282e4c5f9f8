"""A model small enough for subprocess tests of the trainer (seconds per run on 2 cores)."""

from experiments import base


def get_config():
    c = base.get_config()
    c.name = "micro"
    c.noise.type = "balanced"
    c.model.vocab_size = 64
    c.model.num_layers = 2
    c.model.d_model = 64
    c.model.seq_len = 32
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.data.source = "synthetic_markov"
    c.data.vocab_size = 64
    c.train.batch_size = 8
    c.train.steps = 40
    c.train.log_every = 5
    c.train.eval_every = 20
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.train.peak_flops_per_device = 1e11
    c.optim.warmup_steps = 5
    c.sample.num_samples = 0
    c.mesh.num_devices = 0
    return c
