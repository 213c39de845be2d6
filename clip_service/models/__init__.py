"""The models: specs, loading, both CLIP libraries' backends, precision and runtimes,
preprocessing, the text tower's shared-prefix path, captioning (BLIP, BLIP-2, GIT, Florence-2).
Plain Python: no HTTP."""
