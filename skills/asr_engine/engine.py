"""The streaming transcriber: skills/asr_server's StreamingTranscriber, stepped on its own thread.

Each iteration of the engine loop:
  1. take what the event loop sent (streams opened and closed, feeds and finalizes);
  2. answer the requests whose usable audio did not grow (the last transcript is theirs);
  3. admit streams with a waiting request, oldest request first, while slots are free: one
     encoder pass extends all their encoder caches, one projection their cross-attention K/V;
  4. one verify forward restarts all the admitted streams' decodes: [start] + the previous
     partial's tokens, greedy acceptance of the longest matching prefix;
  5. one decode step for every decode already running (joined in an earlier iteration), with a
     few tokens drafted by lookup per decode while the batch is small (verified alike);
  6. one LM head over the rows of 4 and 5; decodes that end answer their request and free their slot.
So a stream's chunk joins the running batch at the next step (continuous batching across
streams); a stream has at most one decode in flight, so its chunks are answered in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from skills.encoder_cache import IncrementalEncoder
from skills.encoder_cache.cross_kv import CrossKV, update_cross_kv
from skills.engine_core.engine_thread import OwnThread
from skills.speculative_decoding import LookupProposer, accept_greedy

from .config import EngineConfig, token_limit
from .counters import AsrCounters
from .decoder import Decoder
from .stream import Reply, Request, StreamState, Transcript

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.5


@dataclass
class Decode:
    """One request's decode in flight (running[i] decodes in slot i)."""

    stream: StreamState
    samples: int  # usable samples it transcribes
    limit: int
    draft: list[int]  # the verify's (the previous partial), then each step's lookup draft
    lookup: LookupProposer | None = None
    tokens: list[int] = field(default_factory=list)
    stopped: bool = False
    position: int = 0  # tokens whose K/V are in the slot
    next_token: int = 0  # the token to feed at `position`

    def emit(self, token: int, eos: frozenset[int]) -> bool:
        """Append a greedy token; returns whether the decode is over."""
        if token in eos:
            self.stopped = True
            return True
        self.tokens.append(token)
        return len(self.tokens) >= self.limit


@dataclass(frozen=True)
class Model:
    encoder: IncrementalEncoder
    decoder: Decoder
    tokenizer: object  # decode(ids, skip_special_tokens=True) -> str
    start_token: int
    eos: frozenset[int]


class AsrEngine(OwnThread):
    _thread_name = "asr-engine"

    def __init__(self, model: Model, cfg: EngineConfig) -> None:
        self.m = model
        self.cfg = cfg
        self.eos_draft = min(model.eos)
        self.frame = model.encoder.geo.samples_per_frame
        self.max_frames = model.decoder.w.cross.max_frames  # the decoder's position embeddings
        self.slots = model.decoder.new_slots(cfg.max_streams)
        self.running: list[Decode] = []  # running[i] decodes in slot i
        self.streams: dict[str, StreamState] = {}
        self.stats = AsrCounters()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._arrival = itertools.count()
        self._heads: dict[str, int] = {}  # stream -> arrival number of its oldest waiting request
        self._open: set[str] = set()  # the event loop's view (open/close/feed run there)
        self._private = itertools.count()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads = torch.get_num_threads()

    # --- the event loop: StreamingTranscriber ---

    def open(self, stream: str) -> None:
        if stream in self._open:
            raise ValueError(f"stream {stream!r} is already open")
        self._open.add(stream)
        self._inbox.put(("open", stream, None))

    async def feed(self, stream: str, samples: np.ndarray) -> str:
        return await self._ask(stream, samples)

    async def finalize(self, stream: str) -> str:
        return await self._ask(stream, None)

    def close(self, stream: str) -> None:
        if stream in self._open:
            self._open.discard(stream)
            self._inbox.put(("close", stream, None))

    async def transcribe(self, samples: np.ndarray) -> str:
        stream = f"\0transcribe-{next(self._private)}"  # no client's id starts with NUL
        self.open(stream)
        try:
            return await self.feed(stream, samples)
        finally:
            self.close(stream)

    def counters(self) -> dict[str, float]:
        return self.stats.snapshot()

    def request(self, stream: str, samples: np.ndarray | None, reply: Reply) -> None:
        """Queue a feed (samples) or a finalize (None); `reply` gets the transcript, an error, or
        None (the stream closed first), on the engine thread. The callers of open, request and
        close are one thread (the event loop's, or a test's)."""
        if stream not in self._open:
            raise KeyError(f"stream {stream!r} is not open")
        if samples is not None:
            samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        self._inbox.put(("request", stream, Request(samples, reply)))

    async def _ask(self, stream: str, samples: np.ndarray | None) -> str:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.request(stream, samples, _reply_to(loop, future))
        return await future

    # --- the engine thread ---

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)  # OpenMP settings are per thread
        while not self._stopping.is_set():
            try:
                self.step(block=True)
            except Exception as exc:  # noqa: BLE001 - the streams in the failed step fail; the rest go on
                log.exception("engine step failed")
                self._fail_in_flight(exc)

    # --- the engine thread ---

    def step(self, block: bool = False) -> bool:
        """One iteration; returns whether a forward ran."""
        self._drain(block and not self.running and not self._heads)
        with torch.inference_mode():
            joining = self._admit()
            if not joining and not self.running:
                return False
            self._forward(joining)
        return True

    def run_until_idle(self) -> None:
        while self.step() or self.running or self._heads or not self._inbox.empty():
            pass

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._receive(*item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _receive(self, kind: str, stream: str, request: Request | None) -> None:
        if kind == "open":
            self.streams[stream] = StreamState(stream, self.m.encoder.new_state(), CrossKV(self.m.decoder.w.cross))
        elif kind == "close":
            s = self.streams.pop(stream, None)
            if s is not None:
                s.closed = True  # a decode in flight is dropped at the next step
                self._heads.pop(stream, None)
                for r in s.requests:
                    r.reply(None)
                s.requests.clear()
        elif stream not in self.streams:  # failed in an earlier step
            request.reply(RuntimeError(f"stream {stream!r} failed; open a new one"))
        else:
            s = self.streams[stream]
            if request.samples is not None:
                s.append(request.samples)
                request.samples = None
            request.upto = s.received
            s.requests.append(request)
            self._heads.setdefault(stream, next(self._arrival))

    def _admit(self) -> list[Decode]:
        """Answer what needs no decode; admit streams into free slots; encode them all at once."""
        chosen: list[tuple[StreamState, int]] = []
        for stream in sorted(self._heads, key=self._heads.get):
            s = self.streams[stream]
            if s.busy:
                continue
            self._answer_unchanged(s)
            if not s.requests or len(self.running) + len(chosen) >= self.cfg.max_streams:
                continue
            if self._usable(s.requests[0].upto) // self.frame > self.max_frames:
                self._fail(s, ValueError(f"the stream is longer than the model's {self.max_frames} encoder frames "
                                         f"({self.max_frames * self.frame / 16000:.1f} s)"))
                continue
            chosen.append((s, self._usable(s.requests[0].upto)))
            s.busy = True
        if not chosen:
            return []
        self._encode(chosen)
        joining = []
        for s, n in chosen:
            limit = token_limit(n)
            if limit == 0:
                self._finish(s, Transcript(n, (), False, ""))
                continue
            draft = s.last.draft(self.eos_draft)[:self._draft_room(s, limit)]
            lookup = LookupProposer(s.last.tokens, None) if self.cfg.lookup_tokens else None
            joining.append(Decode(s, n, limit, draft, lookup, next_token=self.m.start_token))
        return joining

    def _draft_room(self, s: StreamState, limit: int) -> int:
        if not self.cfg.draft:
            return 0
        return limit if s.accepted is None else min(limit, s.accepted + self.cfg.draft_slack)

    def _usable(self, samples: int) -> int:
        """The rule's usable samples: whole encoder frames."""
        return samples // self.frame * self.frame

    def _encode(self, chosen: list[tuple[StreamState, int]]) -> None:
        audio = []
        for s, n in chosen:
            if not self.cfg.encoder_cache:  # nothing kept: the whole buffer again, the same code
                s.encoder, s.encoded = self.m.encoder.new_state(), 0
            audio.append(torch.from_numpy(s.audio[s.encoded:n].astype(np.float32) / 32768.0))
            s.encoded = n
        states = [s.encoder for s, _ in chosen]
        before = [(st.computed, st.reused) for st in states]
        extensions = self.m.encoder.extend(states, audio)
        projected = update_cross_kv([s.cross for s, _ in chosen], [st.hidden_states for st in states],
                                    [e.changed_from for e in extensions])
        self.stats.add(encoder_batches=1, cross_kv_frames_computed=projected,
                       encoder_frames_computed=sum(st.computed - c for st, (c, _) in zip(states, before)),
                       encoder_frames_reused=sum(st.reused - r for st, (_, r) in zip(states, before)))

    def _forward(self, joining: list[Decode]) -> None:
        """Verify rows for the joining decodes, a step for the running ones, one LM head for all."""
        self._drop_closed()
        dec, hidden = self.m.decoder, []
        stepping = list(self.running)
        if stepping:
            room = min(self.cfg.lookup_tokens, (self.cfg.lookup_rows - len(stepping)) // len(stepping))
            for d in stepping:
                d.draft = self._lookup(d, room)
            hidden += self._rows(stepping, 0, torch.tensor([d.position for d in stepping]))
            drafted = sum(len(d.draft) for d in stepping)
            self.stats.add(decode_steps=1, decode_rows=len(stepping), lookup_tokens_proposed=drafted)
        if joining:
            for i, d in enumerate(joining, start=len(stepping)):
                self.slots.load_cross(i, d.stream.cross)
            hidden += self._rows(joining, len(stepping), torch.zeros(len(joining), dtype=torch.long))
            self.running += joining
            self.stats.add(verify_forwards=1, draft_tokens_proposed=sum(len(d.draft) for d in joining))
        greedy = iter(dec.greedy(torch.cat(hidden)))
        done = [i for i, d in enumerate(stepping + joining)
                if self._advance(d, [next(greedy) for _ in range(1 + len(d.draft))])]
        self._retire(done)

    def _rows(self, decodes: list[Decode], first: int, starts: torch.Tensor) -> list[torch.Tensor]:
        """One forward of [next token] + draft per decode (slots first.., padded to the longest);
        the hidden states of each decode's real rows."""
        tokens = torch.zeros(len(decodes), 1 + max(len(d.draft) for d in decodes), dtype=torch.long)
        for i, d in enumerate(decodes):
            tokens[i, :1 + len(d.draft)] = torch.tensor([d.next_token, *d.draft])
        out = self.m.decoder.forward(self.slots, first, tokens, starts)
        return [out[i, :1 + len(d.draft)] for i, d in enumerate(decodes)]

    def _lookup(self, d: Decode, room: int) -> list[int]:
        """A decode step's draft: never past the token limit (its last row's token is the bonus)."""
        room = min(room, d.limit - len(d.tokens) - 1)
        return d.lookup.propose(d.tokens, room) if d.lookup is not None and room > 0 else []

    def _advance(self, d: Decode, greedy: list[int]) -> bool:
        """Take a forward's greedy tokens for one decode (1 + len(draft) rows): the accepted draft
        tokens and the model's next one. Returns whether the decode is over."""
        accepted = accept_greedy(d.draft, greedy)
        if d.position == 0:  # the restart's verify: the previous partial was the draft
            if d.draft:
                d.stream.accepted = accepted
            self.stats.add(draft_tokens_accepted=accepted)
        else:
            self.stats.add(lookup_tokens_accepted=accepted)
        for emitted, token in enumerate(greedy[:accepted + 1], start=1):
            if d.emit(token, self.m.eos):
                self.stats.add(tokens_generated=emitted)
                return True
        self.stats.add(tokens_generated=accepted + 1)
        if d.lookup is not None and d.position > 0:
            d.lookup.update(d.tokens, accepted + 1)
        d.position += accepted + 1
        d.next_token = greedy[accepted]
        return False

    def _retire(self, slots: list[int]) -> None:
        """End the decodes in these slots; the last slots move into the holes."""
        for i in sorted(slots, reverse=True):
            d, last = self.running[i], len(self.running) - 1
            if i != last:
                self.slots.move(last, i, self.running[last].position)
                self.running[i] = self.running[last]
            self.running.pop()
            if not d.stream.closed:
                text = self.m.tokenizer.decode(d.tokens, skip_special_tokens=True)
                self._finish(d.stream, Transcript(d.samples, tuple(d.tokens), d.stopped, text))
                self.stats.add(decodes=1)

    def _drop_closed(self) -> None:
        self._retire([i for i, d in enumerate(self.running) if d.stream.closed])

    def _finish(self, s: StreamState, t: Transcript) -> None:
        s.last, s.busy = t, False
        self._answer(s, t.text)
        self._answer_unchanged(s)  # a finalize queued behind this feed: now, not an iteration later

    def _answer_unchanged(self, s: StreamState) -> None:
        """Answer the stream's next requests whose usable audio is the last transcript's."""
        while s.requests and self._usable(s.requests[0].upto) == s.last.samples:
            self._answer(s, s.last.text)

    def _answer(self, s: StreamState, text: str) -> None:
        s.requests.popleft().reply(text)
        self.stats.add(chunks=1)
        if s.requests:
            self._heads[s.id] = next(self._arrival)
        else:
            self._heads.pop(s.id, None)

    def _fail_in_flight(self, exc: Exception) -> None:
        """Fail every stream with a request in flight (its caches may be half updated): the error
        answers its requests, and the stream is gone (its next request is answered with an error)."""
        failed = {d.stream.id for d in self.running} | {s.id for s in self.streams.values() if s.busy}
        self.running.clear()
        for stream in failed:
            self._fail(self.streams[stream], RuntimeError(f"transcription failed: {type(exc).__name__}: {exc}"))

    def _fail(self, s: StreamState, error: Exception) -> None:
        del self.streams[s.id]
        s.closed = True
        self._heads.pop(s.id, None)
        for r in s.requests:
            r.reply(error)
        s.requests.clear()


def _reply_to(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> Reply:
    """A thread-safe reply: the text, an error, or None (the stream closed: cancelled)."""

    def settle(result: str | BaseException | None) -> None:
        if future.done():
            return
        if result is None:
            future.cancel()
        elif isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def reply(result: str | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(settle, result)
        except RuntimeError:  # the loop is closed: nobody waits
            pass

    return reply
