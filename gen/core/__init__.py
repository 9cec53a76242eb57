"""The foundation layer: typed configs and the command line, atomic file I/O, run directories,
checkpoint directories, launcher and hardware probes, experiment tracking. Imports no other layer."""
