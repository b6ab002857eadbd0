"""JSON-schema constrained decoding with llguidance: grammars compiled once per schema, one
matcher per sequence, batched numpy bitmasks applied to logits, jump-forward over forced tokens;
exactly plain masked greedy decoding. See NOTE.md."""

from .bitmask import BatchMasker, MaskStats, allowed_ids, allowed_mask, apply_bitmask
from .constraint import Constraint, ConstraintError
from .grammar import CacheStats, CompiledGrammar, GrammarCache, SchemaError, schema_of, tokenizer_from_hf
from .greedy import Decoded, constrained_greedy
from .jump_forward import JumpStats, jump_forward

__all__ = ["BatchMasker", "CacheStats", "CompiledGrammar", "Constraint", "ConstraintError", "Decoded", "GrammarCache",
           "JumpStats", "MaskStats", "SchemaError", "allowed_ids", "allowed_mask", "apply_bitmask", "constrained_greedy",
           "jump_forward", "schema_of", "tokenizer_from_hf"]
