"""Everything that knows HTTP or BentoML: schemas, middleware, the entry service's side of
encoding, classification, interrogation and the OpenAI route, upstream calls, metrics,
logs, shutdown, and the private hooks into BentoML and uvicorn (hooks.py, version-checked)."""
