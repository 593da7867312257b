"""The policy: what is live and shadow, reload, versions, shadow mode and its report.

Clients name a policy only inside the policy directory or upload it (policy.library);
the server's own configured file is the only path read without a client's name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from service.api.errors import error_response, not_found
from service.api.openapi import error_response as documented
from service.api.publishing import publish, publish_file
from service.api.security import caller
from service.api.state import AppState, get_state
from service.auth import Principal
from service.policy import PolicyError
from service.policy.library import PolicyRefused
from service.policy.parse import LoadedPolicy
from service.schemas import PolicySourceIn

router = APIRouter(tags=["policy"])
READ, ADMIN = Depends(caller("read")), Depends(caller("admin"))
# what a named or uploaded policy can be refused with (policy.library.PolicyRefused)
REFUSED = {403: documented("the name leads out of the policy directory (a link, a device)"),
           404: documented("no such policy file in the policy directory"),
           413: documented("the policy is over the size limit")}  # fmt: skip


def _policy_errors(exc: PolicyError) -> JSONResponse:
    detail = [{"field": "policy", "message": line, "type": "policy_error"} for line in exc.errors]
    return error_response(422, "invalid_policy", detail)


def _refused(exc: PolicyRefused) -> JSONResponse:
    detail = [{"field": exc.field, "message": exc.message, "type": "policy_refused"}]
    return error_response(exc.status, "policy_refused", detail)


def _describe(st: AppState, version: str | None) -> dict | None:
    if version is None:
        return None
    bundle = st.registry.bundle(version) or {}
    return {"name": bundle.get("name"), "version": version, "source": bundle.get("source")}


def _load_source(st: AppState, body: PolicySourceIn) -> LoadedPolicy:
    if body.name is not None:
        return st.policy_dir.load(body.name)
    return st.policy_dir.load_text(body.text or "")


async def _publish_source(
    st: AppState, body: PolicySourceIn | None, role: str, actor: Principal
) -> Any:
    try:
        if body is None:
            return await asyncio.to_thread(publish_file, st.registry, st.settings.policy_path,
                                           role, actor.name)  # fmt: skip
        lp = await asyncio.to_thread(_load_source, st, body)
        return await asyncio.to_thread(publish, st.registry, lp, role, actor.name)
    except PolicyRefused as exc:
        return _refused(exc)
    except PolicyError as exc:
        return _policy_errors(exc)


@router.get("/v1/policy")
async def live_policy(st: AppState = Depends(get_state), _: Principal = READ) -> dict:
    """The live policy (and the shadow candidate, if any)."""
    current = await asyncio.to_thread(st.registry.current)
    return {
        "live": await asyncio.to_thread(_describe, st, current["live"]),
        "shadow": await asyncio.to_thread(_describe, st, current["shadow"]),
        "watching": str(st.settings.policy_path) if st.settings.policy_watch else None,
    }


@router.post("/v1/policy/reload", responses=REFUSED)
async def reload_policy(
    body: PolicySourceIn | None = None, st: AppState = Depends(get_state),
    actor: Principal = ADMIN,
) -> Any:  # fmt: skip
    """Without a body, re-read the configured policy file; with one, publish the named
    file of the policy directory or the uploaded text. A valid policy goes live, an
    invalid one is refused (422 with file:line errors) and the live one stays."""
    return await _publish_source(st, body, "live", actor)


@router.get("/v1/policy/versions")
async def policy_history(
    limit: int = Query(100, ge=1, le=10_000), st: AppState = Depends(get_state),
    _: Principal = ADMIN,
) -> list[dict]:  # fmt: skip
    """Every change of the live and shadow versions, newest first."""
    return await asyncio.to_thread(st.registry.history, limit)


@router.get("/v1/policy/versions/{version}",
            responses={404: documented("no policy version of that name")})
async def policy_version(
    version: str = Path(pattern=r"^[A-Za-z0-9]{1,64}$"), st: AppState = Depends(get_state),
    _: Principal = ADMIN,
) -> Any:  # fmt: skip
    """The exact policy (YAML and included files) of a version that has been live."""
    bundle = await asyncio.to_thread(st.registry.bundle, version)
    if bundle is None:
        return not_found("version", f"unknown policy version {version!r}")
    return bundle


@router.post("/v1/policy/shadow", responses=REFUSED)
async def start_shadow(
    body: PolicySourceIn, st: AppState = Depends(get_state), actor: Principal = ADMIN
) -> Any:
    """Run a candidate policy beside the live one on every post; nothing it decides is
    applied. The candidate is a file of the policy directory (`name`) or uploaded
    (`text`); a name outside the directory is refused."""
    return await _publish_source(st, body, "shadow", actor)


@router.delete("/v1/policy/shadow")
async def stop_shadow(st: AppState = Depends(get_state), actor: Principal = ADMIN) -> dict:
    return {"stopped": await asyncio.to_thread(st.registry.clear, "shadow", actor.name)}


@router.get("/v1/policy/shadow/report",
            responses={404: documented("no shadow policy is running")})
async def shadow_report(
    examples: int = Query(20, ge=0, le=200), st: AppState = Depends(get_state),
    _: Principal = ADMIN,
) -> Any:  # fmt: skip
    """How often and where the shadow policy disagrees with the live one, with examples."""
    shadow = (await asyncio.to_thread(st.registry.current))["shadow"]
    if shadow is None:
        return not_found("shadow", "no shadow policy is running")
    return await asyncio.to_thread(st.shadow_stats.report, shadow, examples)
