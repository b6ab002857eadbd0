"""Moved to skills/openai_server/detokenizer.py; kept so existing imports keep working."""

from skills.openai_server.detokenizer import INCOMPLETE_CHAR, IncrementalText

__all__ = ["INCOMPLETE_CHAR", "IncrementalText"]
