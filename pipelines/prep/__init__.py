"""Ray Data programs that prepare datasets: raw shards -> parts (`dataset`), + AE latents (`add_latents`)."""
