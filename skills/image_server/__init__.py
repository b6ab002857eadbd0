"""The text-to-image HTTP layer over any image engine (see NOTE.md)."""
from .app import create_app, png, serve
from .engine_api import ImageEngine
from .protocol import ROUTE, GenerationParams, RequestError, parse

__all__ = ["ROUTE", "GenerationParams", "ImageEngine", "RequestError", "create_app", "parse", "png", "serve"]
