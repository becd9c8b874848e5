"""The error hierarchy shared by both tiers (after Petals' and httpx's small trees).

Each error carries the HTTP status a service should answer with, so one
exception handler per app maps domain errors to responses.
"""

from __future__ import annotations


class EdgesplitError(Exception):
    """Base of every error edgesplit raises on purpose."""

    status_code = 500
    error_type = "server_error"


class UserError(EdgesplitError):
    """The caller asked for something invalid; answered with a 4xx, naming the request field at fault (`param`)
    when there is one."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str = "", param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedModelError(UserError):
    """The checkpoint's architecture is not one edgesplit knows how to cut."""


class AuthenticationError(UserError):
    """No credentials where they are required."""

    status_code = 401
    error_type = "authentication_error"
    headers = {"www-authenticate": "Bearer"}


class PermissionDeniedError(UserError):
    """Credentials given, but not the right ones (or the guarded surface is switched off)."""

    status_code = 403
    error_type = "permission_error"


class ModelNotFoundError(UserError):
    """The request names a model this service does not serve."""

    status_code = 404
    error_type = "not_found_error"


class PlanError(UserError):
    """A plan that does not fit the model or the deployment."""

    status_code = 422


class FrameError(UserError):
    """A wire frame that is malformed, corrupt, oversized or inconsistent."""


class FrameTooLargeError(FrameError):
    """A frame, or what it decompresses to, is over the configured limits."""

    status_code = 413


class SessionNotFoundError(UserError):
    """The session is unknown, expired or was evicted."""

    status_code = 404
    error_type = "not_found_error"


class SessionConflictError(UserError):
    """The frame does not continue the session (wrong position or layer range)."""

    status_code = 409


class ModelMismatchError(UserError):
    """The weights a session expects are not the weights this tier holds: answering would silently mix models."""

    status_code = 409
    error_type = "model_mismatch"


class CapacityError(EdgesplitError):
    """The service is at a configured capacity limit; try again later."""

    status_code = 429
    headers = {"retry-after": "1"}
    error_type = "rate_limit_error"


class CloudUnavailableError(EdgesplitError):
    """The cloud tier could not be reached or answered with an error."""

    status_code = 502
    error_type = "cloud_unavailable"


class CloudRefusedError(CloudUnavailableError):
    """The cloud answered a frame with a 4xx: the edge and cloud disagree (plan, session, model)."""

    def __init__(self, message: str, cloud_status: int) -> None:
        super().__init__(message)
        self.cloud_status = cloud_status  # the cloud's HTTP status, e.g. 404 for a session it no longer holds


class CloudModelMismatchError(CloudRefusedError):
    """The cloud holds other weights than this edge for the plan's blocks: it must not be used for this model."""


class CloudSessionLostError(CloudRefusedError):
    """The cloud no longer holds the session (restarted, expired, evicted): replaying the prefix rebuilds it."""
