"""Speculative decoding without a draft model: drafts from the request's predicted output or
from prompt lookup, verified in one forward, greedy acceptance. See NOTE.md."""

from .proposer import NgramProposer, PredictionProposer
from .speculator import Draft, Drafter, SpecConfig, Speculator, accept_greedy

__all__ = ["Draft", "Drafter", "NgramProposer", "PredictionProposer", "SpecConfig", "Speculator", "accept_greedy"]
