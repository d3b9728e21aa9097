"""The HTTP service: a store's reads and live streams over HTTP (`create_app`), and its bearer tokens."""

from runevents.serve.app import create_app
from runevents.serve.tokens import Reader, TokenFileError, Tokens, hash_token

__all__ = ["Reader", "TokenFileError", "Tokens", "create_app", "hash_token"]
