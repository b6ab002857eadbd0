"""Speculative decoding without a draft model: drafts looked up in the request's predicted output,
prompt and own output, verified in one forward, greedy acceptance. See NOTE.md."""

from .proposer import LookupProposer
from .speculator import Draft, Drafter, SpecConfig, Speculator, accept_greedy

__all__ = ["Draft", "Drafter", "LookupProposer", "SpecConfig", "Speculator", "accept_greedy"]
