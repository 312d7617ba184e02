"""The Ray-free training engine: the loop, checkpoints, data order, distribution, optimiser groups,
EMA, and the AE and AR stage definitions. `pipelines.train` launches it on Ray Train; benchmarks,
calibration and in-process tests run the same code in a plain process."""
