"""State shared by every replica of a deployment: jobs, their progress, and the custom
label tables' lists.

On one host it lives in a SQLite file and a directory (``JOBS_DB``, ``CUSTOM_TABLES_DIR``),
which need no server. Across hosts it lives in Redis (``REDIS_URL``): every entry replica
answers every job, and every encoder replica takes up every uploaded table
(docs/scaling.md).
"""
