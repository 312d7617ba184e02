"""`vgt eval` as Ray programs: reconstruction and generation actors, the shapes benchmark, GenEval/DPG layouts."""
