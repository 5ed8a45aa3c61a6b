"""The chat data set of `python -m bench.sft` (make_chat.py builds chat.jsonl)."""
