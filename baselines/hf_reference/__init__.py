"""The study's "reference PyTorch" baseline over plain `transformers`, one request at a time
(others wait FIFO): an OpenAI-compatible server over `model.generate` for a language model, and
for a streaming speech model (moonshine_streaming) the ASR protocol of skills/asr_server with a
full recompute of the whole audio at every chunk (asr.py), the study's naive server.

Run it with `python -m baselines.hf_reference --model DIR --port P`.
"""
