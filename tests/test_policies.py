"""Policy specs: compiling, validating, merging and matching (pure)."""

from __future__ import annotations

import logging

import pytest

from ratelimit_app.limiter import spec_of
from ratelimit_app.policies import PolicySpec, compile_all, compile_spec, glob_to_regex


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/api/*", "/api/items/7/", True),
        ("/api/*", "/api/", True),
        ("/api/*", "/apix", False),
        ("/api/*/edit", "/api/1/2/edit", True),
        ("/a.b", "/axb", False),
        ("/exact/", "/exact/", True),
        ("/exact/", "/exact/more", False),
    ],
)
def test_globs_match_the_whole_path_with_star_spanning_slashes(glob, path, matches):
    assert bool(glob_to_regex(glob).fullmatch(path)) is matches


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rate": "ten/m"}, "Invalid rate 'ten/m'"),
        ({"algorithm": "magic"}, "Unknown algorithm 'magic'"),
        ({"burst": 3, "algorithm": "fixed_window"}, "burst applies to"),
        ({"cost": 0}, "cost must be a positive integer"),
        ({"methods": "GET,FETCH"}, "unknown HTTP method"),
        ({"mode": "loud"}, "mode must be 'enforce' or 'shadow'"),
        ({"path_regex": "(["}, "path_regex does not compile"),
        ({"key": "cookie:x"}, "Unknown key type"),
        ({"tiers": [("gold", "lots", None)]}, "Invalid rate 'lots'"),
        (
            {"exempt_networks": ["10.0.0.300/8"]},
            "does not appear to be an IPv4 or IPv6",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(fields, message):
    spec = PolicySpec.from_dict({"name": "p", "rate": "5/m", **fields}, "settings")
    with pytest.raises(ValueError, match=message):
        compile_spec(spec)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"exempt_groups": "staff"}, "exempt_groups must be a list"),
        ({"path": 7}, "path must be a string"),
        ({"cost": True}, "cost must be an integer"),
        ({"enabled": "yes"}, "enabled must be True or False"),
    ],
)
def test_wrong_types_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        PolicySpec.from_dict({"name": "p", "rate": "5/m", **fields}, "settings")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fail_mode": "maybe"}, "fail_mode must be one of open, closed, local"),
        ({"status_code": 302}, "status_code must be 400-599"),
    ],
)
def test_bad_failure_settings_are_refused(fields, message):
    spec = PolicySpec.from_dict({"name": "p", "rate": "5/m", **fields}, "settings")
    with pytest.raises(ValueError, match=message):
        compile_spec(spec)


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="unknown field"):
        PolicySpec.from_dict({"name": "p", "rate": "5/m", "pth": "/"}, "settings")


def test_layers_merge_by_name_and_sort_by_priority():
    layers = {
        "code": [
            PolicySpec("a", "1/m", source="code"),
            PolicySpec("b", "2/m", priority=5),
        ],
        "settings": [PolicySpec("a", "3/m", priority=50)],
        "db": [PolicySpec("a", "4/m", source="db", priority=1)],
    }
    merged = compile_all(layers)
    assert [(p.name, p.spec.rate) for p in merged] == [("a", "4/m"), ("b", "2/m")]


def test_an_invalid_override_leaves_the_overridden_policy_in_force(caplog):
    layers = {
        "settings": [PolicySpec("a", "3/m")],
        "db": [PolicySpec("a", "three per minute", source="db")],
    }
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
        merged = compile_all(layers)
    assert [p.spec.rate for p in merged] == ["3/m"]
    assert "skipping db policy 'a'" in caplog.text


def test_the_most_generous_tier_wins():
    policy = compile_spec(
        PolicySpec(
            "tiered", "1/m", tiers=(("silver", "10/m", None), ("gold", "100/m", 150))
        )
    )
    spec = policy.rule_spec(frozenset({"silver", "gold"}))
    assert (spec.rate.limit, spec.capacity) == (100, 150)
    assert policy.rule_spec(frozenset()).rate.limit == 1


def test_a_policy_rule_without_tiers_or_cost_is_the_engine_rule_of_its_fields():
    policy = compile_spec(
        PolicySpec("own", "5/m", algorithm="token_bucket", burst=7, cost=2)
    )
    expected = spec_of("own", policy.rate, "token_bucket", 2, 7, False, False)
    assert policy.rule_spec(frozenset()) == expected
    assert policy.rule_spec(frozenset({"any"})) is policy.rule_spec(frozenset())
    assert policy.rule_spec(frozenset(), cost=3).argv[4] == 3  # a cost is honoured


@pytest.mark.parametrize(
    ("fields", "reads_user", "exempts"),
    [
        ({}, False, False),
        ({"key": "user"}, True, False),
        ({"key": "user_or_ip"}, True, False),
        ({"exempt_staff": True}, True, True),
        ({"exempt_users": (1,)}, True, True),
        ({"exempt_groups": ("g",)}, True, True),
        ({"tiers": (("g", "9/m", None),)}, True, False),
        ({"exempt_networks": ("10.0.0.0/8",)}, False, True),
    ],
)
def test_what_a_policy_reads_and_whether_it_exempts(fields, reads_user, exempts):
    policy = compile_spec(PolicySpec("p", "1/m", **fields))
    assert (policy.reads_user, policy.exempts) == (reads_user, exempts)
    if not exempts:
        assert not policy.is_exempt("10.0.0.1", None, frozenset({"g"}))


def test_network_exemptions_accept_ipv4_and_ipv6():
    policy = compile_spec(
        PolicySpec("p", "1/m", exempt_networks=("192.0.2.0/24", "2001:db8::/32"))
    )
    assert policy.is_exempt("192.0.2.200", None, frozenset())
    assert policy.is_exempt("2001:db8:1:2::/64", None, frozenset())
    assert not policy.is_exempt("198.51.100.1", None, frozenset())
    assert not policy.is_exempt("\x00missing", None, frozenset())
