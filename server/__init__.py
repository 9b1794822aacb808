"""HTTP front, inference worker pool, balancer, batching and cache for the policy models."""
