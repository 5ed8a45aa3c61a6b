"""Benchmarks that check tunesmith's predictions against measurements (`python -m bench.memory`)."""
