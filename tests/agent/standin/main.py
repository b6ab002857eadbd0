"""Stand-in for a composed engine stack (results/stacks/engine-a), for the agent's tests.

A small OpenAI-compatible server over a transformers model: greedy decoding with a KV cache,
static batching of the requests waiting (up to --max-batch-size, left-padded), logprobs, SSE
streaming with usage, /metrics forward_passes. Its knobs change its speed the way a real engine's
would. `--step-overhead-ms` (a sleep per forward pass) stands for the per-token Python overhead of
a naive decode loop; the LLM test double's scripted patches turn it off.

    python main.py --model DIR --port P [--max-batch-size N] [--dtype float32|bfloat16] [--threads N]
        [--step-overhead-ms MS]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_MAX_TOKENS = 16


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    top_k: int
    ignore_eos: bool
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)


class Engine:
    def __init__(self, model_dir: str, dtype: str, overhead_ms: float, max_batch: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else min(self.eos)
        self.overhead_s = overhead_ms / 1000
        self.max_batch = max_batch
        self.forward_passes = 0
        self.jobs: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._worker, daemon=True).start()

    def forward(self, ids, past):
        if self.overhead_s:
            time.sleep(self.overhead_s)
        self.forward_passes += 1
        out = self.model(input_ids=self.torch.tensor([ids]), past_key_values=past, use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    def _worker(self) -> None:
        while True:
            jobs = [self.jobs.get()]
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                self._run(jobs[0]) if len(jobs) == 1 else self._run_batch(jobs)
            except Exception as exc:  # noqa: BLE001 - reported to the requests, the worker goes on
                for job in jobs:
                    job.loop.call_soon_threadsafe(job.out.put_nowait, exc)

    def _run_batch(self, jobs: list[Job]) -> None:
        """Static batching: left-pad the prompts, decode all rows together until every one is done."""
        torch = self.torch
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.tensor([[self.pad_id] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        done, emitted = [False] * len(jobs), [0] * len(jobs)
        k = max(1, max(j.top_k for j in jobs))
        past = None
        with torch.inference_mode():
            while True:
                if self.overhead_s:
                    time.sleep(self.overhead_s)
                self.forward_passes += 1
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                                 use_cache=True)
                past = out.past_key_values
                values, idx = torch.log_softmax(out.logits[:, -1].float(), dim=-1).topk(k)
                for b, job in enumerate(jobs):
                    if done[b]:
                        continue
                    token = int(idx[b, 0])
                    top = [(int(i), float(v)) for v, i in zip(values[b].tolist(), idx[b].tolist())][: job.top_k]
                    is_eos = token in self.eos and not job.ignore_eos
                    job.loop.call_soon_threadsafe(job.out.put_nowait, (token, float(values[b, 0]), top, is_eos))
                    emitted[b] += 1
                    if is_eos or emitted[b] >= job.max_tokens:
                        done[b] = True
                        job.loop.call_soon_threadsafe(job.out.put_nowait, None)
                if all(done):
                    return
                ids = idx[:, :1]
                mask = torch.cat([mask, torch.ones(len(jobs), 1, dtype=mask.dtype)], dim=-1)
                positions = positions[:, -1:] + 1

    def _run(self, job: Job) -> None:
        with self.torch.inference_mode():
            logits, past = self.forward(job.prompt_ids, None)
            for n in range(job.max_tokens):
                logprobs = self.torch.log_softmax(logits, dim=-1)
                values, idx = logprobs.topk(max(job.top_k, 1))
                token = int(idx[0])
                top = [(int(i), float(v)) for v, i in zip(values.tolist(), idx.tolist())][: job.top_k]
                is_eos = token in self.eos and not job.ignore_eos
                job.loop.call_soon_threadsafe(job.out.put_nowait, (token, float(values[0]), top, is_eos))
                if is_eos or n == job.max_tokens - 1:
                    break
                logits, past = self.forward([token], past)
        job.loop.call_soon_threadsafe(job.out.put_nowait, None)


def create_app(engine: Engine, name: str):
    app = FastAPI()
    piece = lambda i: engine.tok.decode([i])  # noqa: E731

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return {"forward_passes": engine.forward_passes}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model"}]}

    def prompt_ids(body: dict, chat: bool) -> list[int]:
        if chat:
            text = engine.tok.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
            return engine.tok(text, add_special_tokens=False)["input_ids"]
        prompt = body["prompt"]
        return list(prompt) if isinstance(prompt, list) else engine.tok(prompt)["input_ids"]

    async def generate(body: dict, chat: bool):
        ids = prompt_ids(body, chat)
        top_k = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        job = Job(ids, int(body.get("max_tokens") or DEFAULT_MAX_TOKENS), top_k, bool(body.get("ignore_eos")),
                  asyncio.get_running_loop())
        engine.jobs.put(job)
        while (item := await job.out.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def handle(request: Request, chat: bool):
        body = await request.json()
        rid, created = f"cmpl-{uuid.uuid4().hex[:12]}", int(time.time())
        n_prompt = len(prompt_ids(body, chat))
        if body.get("stream"):
            return StreamingResponse(stream(body, chat, rid, created, n_prompt), media_type="text/event-stream")
        tokens, tops, finish, ids = [], [], "length", []
        async for token, lp, top, is_eos in generate(body, chat):
            tokens.append((piece(token), lp))
            tops.append({piece(i): v for i, v in top})
            if is_eos:
                finish = "stop"
            else:
                ids.append(token)
        text = engine.tok.decode(ids)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(tokens), "total_tokens": n_prompt + len(tokens)}
        if chat:
            content = [{"token": t, "logprob": lp, "top_logprobs": [{"token": k, "logprob": v} for k, v in top.items()]}
                       for (t, lp), top in zip(tokens, tops)]
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": {"content": content} if body.get("logprobs") else None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish,
                      "logprobs": {"tokens": [t for t, _ in tokens], "token_logprobs": [lp for _, lp in tokens],
                                   "top_logprobs": tops} if body.get("logprobs") else None}
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                             "model": name, "choices": [choice], "usage": usage})

    async def stream(body: dict, chat: bool, rid: str, created: int, n_prompt: int):
        ids, sent, count, finish = [], "", 0, "length"
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, reason: str | None) -> str:
            if chat:
                delta = {"content": text} if text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason}
            return "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": name,
                                          "choices": [choice]}) + "\n\n"

        async for token, _, _, is_eos in generate(body, chat):
            count += 1
            if is_eos:
                finish = "stop"
                break
            ids.append(token)
            text = engine.tok.decode(ids)
            if text.endswith("\ufffd"):
                continue  # half a character: wait for the rest
            yield chunk(text[len(sent):], None)
            sent = text
        yield chunk(None, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": n_prompt, "completion_tokens": count, "total_tokens": n_prompt + count}
            yield "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": name,
                                         "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=1, help="requests decoded together (default: 1)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--step-overhead-ms", type=float, default=0, help="sleep per forward pass (default: 0)")
    parser.add_argument("--served-model-name", default="standin")
    args = parser.parse_args()
    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    engine = Engine(args.model, args.dtype, args.step_overhead_ms, args.max_batch_size)
    uvicorn.run(create_app(engine, args.served_model_name), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
