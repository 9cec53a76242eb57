"""echosynth's evaluation layer: fidelity, privacy, feature maps, and the clinicians' survey."""

from gen._guard import check_evaluate_name_clash

check_evaluate_name_clash()
