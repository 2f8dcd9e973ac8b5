"""Cost models: additive per-candidate costs (params, FLOPs, latency)."""
