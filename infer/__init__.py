"""Command-line tools: `python -m infer.generate` (answer a prompt), `python -m infer.bench`."""
