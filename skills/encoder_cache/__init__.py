"""Per-stream incremental encoding for a sliding-window streaming encoder (moonshine_streaming):
keep the frames that can no longer change, recompute only the rest, batched across streams; and
the decoder's cross-attention K/V per frame, recomputed only where the encoder output changed.
See NOTE.md."""

from .cross_kv import CrossKV, CrossProjection, update_cross_kv
from .encoder import Extension, IncrementalEncoder
from .geometry import EncoderGeometry
from .state import EncoderState
from .weights import EncoderWeights

__all__ = ["CrossKV", "CrossProjection", "EncoderGeometry", "EncoderState", "EncoderWeights", "Extension",
           "IncrementalEncoder", "update_cross_kv"]
