"""The diffusion layer: the Gaussian diffusion maths (process), the UNet (unet, presets), training
(loop, ema, timestep_sampler), loading a trained run (trained) and sampling from it (synthesis)."""
