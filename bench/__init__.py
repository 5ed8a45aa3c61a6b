"""Benchmarks: the estimator against measured memory (`python -m bench.memory`), and tunesmith against plain
Hugging Face / TRL fine-tuning (`python -m bench.sft`); see bench/README.md."""
