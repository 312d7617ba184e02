"""Ray Serve programs: the OpenAI-compatible ingress, the AR-sampler and AE-decoder deployments, their config."""
