"""The study's 3B uniform-diffusion run (docs/science.md): the masked 3B setup with uniform noise,
one more layer (L19-D3072, 24 heads) and 22,500 steps (71B tokens); reported ELBO 2.462,
PPL 11.7. Same batch (1536 × 2048 tokens), so the same η = 1.44 from the η* law.
"""

from experiments import masked_3b


def get_config():
    c = masked_3b.get_config()
    c.name = "uniform_3b"
    c.noise.type = "uniform"
    c.model.num_layers = 19
    c.train.steps = 22_500
    return c
