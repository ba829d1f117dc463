"""The demo project: shows ratelimit_app limiting real endpoints."""
