"""The reindex loop: jobs (app/reindex/jobs.py), the worker that runs them (worker.py), and the
build child it starts for each (child.py: the protocol; build.py: what the child runs)."""
