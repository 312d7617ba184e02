"""`vgt demo`: every stage on one local Ray cluster, and its report."""
