"""Test and demo helpers, outside the serving path: tiny random-weight models."""
