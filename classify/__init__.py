"""Downstream classifiers: view and image-quality models, training sets from manifests, metrics."""
