"""Evaluation without Ray: the synthetic shapes benchmark (data, detector, scorer), reconstruction
metrics (PSNR/SSIM, a Fréchet distance on an embedded feature network) and the folder layouts of
the official GenEval / DPG-Bench scorers. `pipelines.eval.actors` runs these over Ray Data."""
