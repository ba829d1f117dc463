"""Settings: lazy reads, defaults, and setup mistakes explained."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from ratelimit_app import conf
from ratelimit_app.backends.redis import get_client
from ratelimit_app.limiter import Limiter, default_limiter


def test_defaults_apply_without_a_ratelimit_setting():
    with override_settings(RATELIMIT=None):
        assert conf.get("KEY_PREFIX") == "rl:"
        assert conf.key_prefix() == "rl:1:"
        assert conf.shard_count() == 1024


def test_settings_changes_are_seen_without_restart():
    with override_settings(RATELIMIT={"KEY_PREFIX": "first:"}):
        assert default_limiter().prefix == "first:1:"
    with override_settings(RATELIMIT={"KEY_PREFIX": "second:"}):
        assert default_limiter().prefix == "second:1:"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("not a dict", "must be a dict"),
        ({"REDIS_ULR": "redis://x"}, "Unknown RATELIMIT setting.*REDIS_ULR"),
        ({"KEY_PREFIX": "rl{x}:"}, "KEY_PREFIX.*braces"),
        ({"SHARDS": 0}, "SHARDS.*positive integer"),
        ({"KEY_SECRET": "short"}, "KEY_SECRET.*at least 16"),
    ],
)
def test_setup_mistakes_say_what_to_fix(value, match):
    with (
        override_settings(RATELIMIT=value),
        pytest.raises(ImproperlyConfigured, match=match),
    ):
        Limiter()


def test_key_secret_defaults_to_one_derived_from_secret_key():
    with override_settings(RATELIMIT={}, SECRET_KEY="one-secret-key"):
        first = conf.key_secret()
    with override_settings(RATELIMIT={}, SECRET_KEY="another-secret-key"):
        second = conf.key_secret()
    assert first != second
    assert b"one-secret-key" not in first


def test_without_redis_url_the_django_redis_cache_is_used(redis_url):
    caches = {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}
    }
    with override_settings(RATELIMIT={}, CACHES=caches):
        assert get_client().ping()


def test_a_missing_redis_configuration_is_explained():
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with (
        override_settings(RATELIMIT={}, CACHES=caches),
        pytest.raises(ImproperlyConfigured, match="set RATELIMIT\\['REDIS_URL'\\]"),
    ):
        get_client()


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    undocumented = [name for name in conf.DEFAULTS if f"`{name}`" not in readme]
    assert undocumented == [], "add these RATELIMIT keys to the README's table"
