"""The demo's policies, seeded as database rows so the admin can edit them."""

from __future__ import annotations

# Model fields of each row. /token and /leaky name their policy in
# @rate_limit (no route matcher); the others match by path, in the middleware.
DEMO_POLICIES = [
    {
        "name": "demo-token",
        "description": "/token: a token bucket of 5, refilled at 5 per 10 s, per IP.",
        "algorithm": "token_bucket",
        "rate": "5/10s",
        "key": "ip",
    },
    {
        "name": "demo-leaky",
        "description": "/leaky: a leaky bucket of 5, leaking 5 per 10 s, per IP.",
        "algorithm": "leaky_bucket",
        "rate": "5/10s",
        "key": "ip",
    },
    {
        "name": "demo-api",
        "description": "Every /api/ path, through the middleware.",
        "path": "/api/*",
        "algorithm": "gcra",
        "rate": "10/m",
        "key": "user_or_ip",
    },
    {
        "name": "demo-login",
        "description": "Login attempts: strict, exact, per IP; refused when Redis fails.",
        "path": "/login",
        "methods": "POST",
        "algorithm": "sliding_window_log",
        "rate": "5/m",
        "key": "ip",
        "fail_mode": "closed",
    },
]


def seed_policies() -> tuple[list[str], list[str]]:
    """Create the missing demo rows; rows already there (maybe edited) are kept.

    Returns the names (created, kept).
    """
    from ratelimit_app.models import Policy

    created, kept = [], []
    for fields in DEMO_POLICIES:
        policy = Policy.objects.filter(name=fields["name"]).first()
        if policy is not None:
            kept.append(policy.name)
            continue
        policy = Policy(**fields)
        policy.full_clean()
        policy.save()
        created.append(policy.name)
    return created, kept
