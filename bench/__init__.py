"""Benchmarks of ratelimit_app against a bare round trip and peer libraries."""
