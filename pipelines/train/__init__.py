"""Ray Train programs: the TorchTrainer launch (`launch`) and the worker function (`worker`)."""
