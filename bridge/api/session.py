"""``/session``: the console's sign-in with an API key, who is signed in, sign-out.

Signing in trades an API key for an HttpOnly, SameSite=Strict session cookie
(``bridge.api.auth``); the answer, and ``GET /session`` later, hand the page the
CSRF token its state-changing requests repeat. With authentication off there is
no sign-in: every caller sees everything, as with the bearer API.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from bridge.api import problems
from bridge.api.auth import SESSION_COOKIE, Session
from bridge.api.problems import Problem
from bridge.api.state import ApiState, State

router = APIRouter(tags=["console"])


class SignIn(BaseModel):
    """An API key to sign in with."""

    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, max_length=512, description="`ktb api-key` made it")


class SessionView(BaseModel):
    """Who the console is signed in as, and what its requests need."""

    authentication: bool = Field(description="False: authentication is off, no sign-in")
    signed_in: bool
    tenant: str | None
    csrf_token: str | None = Field(
        description="Send it as `X-CSRF-Token` with every state-changing request made "
        "with the session cookie"
    )
    expires_at: datetime | None
    temporal_ui_url: str | None = Field(
        None, description="Where the console links a run in the Temporal UI"
    )
    namespace: str = Field("default", description="The Temporal namespace of the runs")


def _view(
    state: ApiState, tenant: str | None = None, session: Session | None = None
) -> SessionView:
    """The answer for a signed-in ``session`` of ``tenant``, or for nobody signed in."""
    return SessionView(
        authentication=state.keys.enabled,
        signed_in=session is not None,
        tenant=tenant,
        csrf_token=session.csrf if session is not None else None,
        expires_at=datetime.fromtimestamp(session.expires, UTC) if session is not None else None,
        temporal_ui_url=state.settings.console_temporal_ui_url,
        namespace=state.settings.temporal_namespace,
    )


@router.get("/session", summary="Who the console is signed in as", response_model=SessionView)
async def get_session(request: Request, state: State) -> SessionView:
    """The session of the cookie (never an error: an ended one is ``signed_in: false``)."""
    token = request.cookies.get(SESSION_COOKIE)
    if state.keys.enabled and token:
        try:
            caller, session = state.keys.session_caller(token, "GET", None)
        except Problem:
            pass
        else:
            return _view(state, caller.tenant, session)
    return _view(state)


@router.post(
    "/session",
    summary="Sign in with an API key: sets the session cookie",
    response_model=SessionView,
    responses=problems.responses(400, 401, 409, 422),
)
async def post_session(
    request: Request, response: Response, state: State, body: SignIn
) -> SessionView:
    """Check the key and set an HttpOnly, SameSite=Strict cookie for its tenant.

    The body is JSON only (FastAPI refuses any other content type with a 422): an HTML
    form of another site cannot sign a browser in to a key of its choosing, and a
    cross-site JSON request needs a CORS preflight this API never grants."""
    if not state.keys.enabled:
        raise Problem(409, "authentication-off", "authentication is off: there is no sign-in")
    token, session, tenant = state.keys.sign_in(body.api_key)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(state.keys.sessions.ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return _view(state, tenant, session)


@router.delete("/session", summary="Sign out: clears the session cookie", status_code=204)
async def delete_session(request: Request) -> Response:
    """Clear the cookie; signing out needs no session (an ended one may be cleared too)."""
    response = Response(status_code=204)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
