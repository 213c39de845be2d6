"""The models: specs, loading, both CLIP libraries' backends, precision and runtimes,
preprocessing, the text tower's shared-prefix path, BLIP captioning. Plain Python: no HTTP."""
