"""What a model service runs: a model, the scheduler that feeds it, and the work kept beside
it (interrogation's label tables and chain steps). Plain Python, no HTTP."""
