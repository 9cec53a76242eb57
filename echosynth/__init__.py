"""echosynth: a balanced synthetic echocardiogram set from a small, imbalanced labelled one.

The packages live at the repository's top level and install under this name (pyproject.toml's
package-dir): echosynth.gen, echosynth.classify, echosynth.evaluate, echosynth.pipelines and
echosynth.reports. The `echosynth` command (echosynth.cli) runs each verb. See docs/architecture.md.
"""

__version__ = "0.1.0"
