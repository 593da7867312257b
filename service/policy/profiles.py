"""Policy profiles, pure: a named overlay (changed rules and category thresholds) laid over
the policy as written, giving the policy that decisions use while the profile is active.

The policy switches to a profile while a language-mix drift alert names it (`language_mix:
on_drift`, see service/langmix); the overlay itself knows nothing of drift.
"""

from __future__ import annotations

from pydantic import ValidationError

from service.policy.model import Policy
from service.yamlsource import SourceError


def overlay(policy: Policy, name: str) -> Policy:
    """``policy`` under its profile ``name``: each named rule takes the keys its change sets
    (a disabled one is left out), each named category its thresholds (per-language ones
    merged over the category's own). The result is a leaf: without profiles and language_mix
    (the policy as written decides when to switch). Raises ValidationError when it is not a
    valid policy (a rule turned into review with no review queue for it, no rule left)."""
    profile = policy.profiles[name]
    doc = policy.model_dump(by_alias=True, exclude_unset=True)
    rules = []
    for rule in doc["rules"]:
        change = profile.rules.get(rule["id"])
        if change is None:
            rules.append(rule)
        elif change.enabled:
            rules.append({**rule, **change.model_dump(exclude_unset=True, exclude={"enabled"})})
    categories = {}
    for cat_name, cat in doc["categories"].items():
        change = profile.categories.get(cat_name)
        if change is not None:
            cat = {**cat, **change.model_dump(exclude_unset=True, exclude={"thresholds"}),
                   "thresholds": {**cat.get("thresholds", {}), **change.thresholds}}  # fmt: skip
        categories[cat_name] = cat
    doc.update(rules=rules, categories=categories)
    doc.pop("profiles", None)
    doc.pop("language_mix", None)
    return Policy.model_validate(doc)


def overlay_all(
    policy: Policy, source: str, lines: dict[tuple, tuple[int, int]], error: type[SourceError]
) -> dict[str, Policy]:
    """Every profile of ``policy`` laid over it; a profile whose result is invalid is an
    error at the profile (``file:line:col: profiles.<name>: ...``), raised as ``error``."""
    out, errors = {}, []
    for name in policy.profiles:
        try:
            out[name] = overlay(policy, name)
        except ValidationError as exc:
            line, col = lines.get(("profiles", name, "<key>"), (1, 1))
            for err in exc.errors():
                where = "".join(f"{p}: " for p in [".".join(map(str, err["loc"]))] if p)
                msg = err["msg"].removeprefix("Value error, ")
                errors.append(f"{source}:{line}:{col}: profiles.{name}: under this profile, "
                              f"{where}{msg}")  # fmt: skip
    if errors:
        raise error(errors)
    return out
