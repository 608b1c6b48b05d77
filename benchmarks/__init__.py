"""Benchmarks of issue 6: overhead, gRPC load, waiting at scale, quota truth, replicas."""
