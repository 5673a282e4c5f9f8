"""The diffusion process in log-SNR form: schedule, forward noising, ELBO, samplers, likelihood."""

from dlmjax.diffusion.schedule import NOISE_SHIFTS, noise_shift

__all__ = ["NOISE_SHIFTS", "noise_shift"]
