"""The data layer: manifests, image sets, importers, the phantom and the training dataset.

`VIEWS` lives here, free of numpy and pandas, so configs can name the default classes cheaply.
"""

VIEWS: tuple[str, ...] = ("A2C", "A4C", "PLAX", "PSAX")  # the four views of the study
