"""Admin-managed, Redis-backed distributed rate limiting for Django."""

__version__ = "0.1.0"
