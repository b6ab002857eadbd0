"""The study's "reference PyTorch" baseline: an OpenAI-compatible server over plain
`transformers` `model.generate`, one request at a time (others wait FIFO).

Run it with `python -m baselines.hf_reference --model DIR --port P`.
"""
