"""echosynth.gen: the foundation (core/), the data layer (data/) and the diffusion model (diffusion/),
with the scripts prepare.py, train.py, sample.py and export.py. See docs/architecture.md."""
