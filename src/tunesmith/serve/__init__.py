"""`tunesmith serve`: an OpenAI-compatible HTTP API over a finished run.

app.py        the FastAPI app: endpoints, API key, body size limit, OpenAI-shaped errors, `serve()`
worker.py     the one thread that owns the model, and the batching of waiting greedy requests
generation.py sampling settings, batched and streamed generation, stop strings
cli.py        the `serve` command
"""
