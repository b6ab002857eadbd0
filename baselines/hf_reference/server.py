"""The routes live in the shared OpenAI server layer (skills/openai_server); this names them here."""

from skills.openai_server.app import ServerInfo, create_app

__all__ = ["ServerInfo", "create_app"]
