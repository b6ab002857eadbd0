"""`mlx_lm server` that also takes a completion `prompt` given as token ids.

Run with mlx-lm's own interpreter, in place of `python -m mlx_lm`:
`python -m baselines.mlx_token_prompts server --model DIR --port P ...` (any mlx_lm command line).

mlx-lm 0.32.2 hands a completion's `prompt` to `tokenizer.encode` whatever its type, so a list of
token ids (which the OpenAI API allows, and which a workload of random token ids needs, since
decoding them to text and encoding again does not give the same ids) fails with HTTP 404 "text
input must be of type `str` ...". Here such a prompt is taken as the ids themselves; everything
else (text prompts, chat, batching, the prompt cache, sampling) is mlx-lm's unchanged but one:

Its byte-level BPE streaming detokenizer trims the first token's leading space, which
`tokenizer.decode` (and so transformers, vLLM, llama.cpp) keeps. A completion then no longer
continues its prompt: " ape strides" comes back "ape strides", glued to the prompt's last word.
On setting C's random-id prompts most continuations start with a spaced word, so 3-7 of 8 outputs
per point failed the oracle on that space alone. `keep_leading_space` makes the text what the
tokenizer decodes (as upstream mlx-lm pull request 1754 proposed); SentencePiece detokenizers,
whose decoder does strip one space, keep their trim. Only this module's Python runs in the
engine's environment: it imports nothing from the harness.
"""

from __future__ import annotations


def _is_token_ids(prompt: object) -> bool:
    return (isinstance(prompt, list) and bool(prompt)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt))


def patch() -> None:
    from mlx_lm import server

    original = server.ResponseGenerator._tokenize

    def tokenize(self, tokenizer, request, args):
        if request.request_type != "chat" and _is_token_ids(request.prompt):
            prompt = list(request.prompt)
            # What mlx-lm returns for a text completion: the prompt, one segment, its type,
            # the start state, no images.
            return prompt, [prompt], ["assistant"], "normal", None
        return original(self, tokenizer, request, args)

    server.ResponseGenerator._tokenize = tokenize


def keep_leading_space() -> None:
    from mlx_lm import tokenizer_utils

    def untrimmed(self, current_text: str) -> str:
        return current_text

    tokenizer_utils.BPEStreamingDetokenizer._maybe_trim_space = untrimmed


def main() -> None:
    patch()
    keep_leading_space()
    from mlx_lm.cli import main as mlx_lm_main

    mlx_lm_main()


if __name__ == "__main__":
    main()
