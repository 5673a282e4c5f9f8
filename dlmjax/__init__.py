"""dlmjax: scaling experiments on discrete diffusion language models in JAX."""
