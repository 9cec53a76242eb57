"""echosynth's base layer: data, run directories, configs, diffusion maths, UNet, training, sampling."""

from gen._guard import check_evaluate_name_clash

check_evaluate_name_clash()
