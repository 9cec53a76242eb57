"""echosynth's evaluation layer: fidelity, privacy, feature maps, and the clinicians' survey."""
