"""clip-interrogator 0.6.0's prompt algorithm over injected async CLIP/BLIP services.

Import from the modules: ``interrogator`` (the algorithm), ``labels`` (the tables),
``label_cache`` and ``table_build`` (their embeddings), ``hub_tables`` (published ones),
``custom_tables`` (the users' own), ``requests`` (what a caller asks for). The package
itself imports nothing, so light modules (the hub client, the labels) stay light.
"""
