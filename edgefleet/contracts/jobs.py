"""Job documents, schema 1: what the fleet sends a camera on edgefleet/v1/<device>/jobs/notify.

The fleet's rollouts (fleet/rollouts.py) build a JobDocument and send `wire()`; the camera
parses it once (JobDocument.model_validate) where it arrives, and a document that does not
parse is ignored there. Kinds: install/rollback for models (agent/update.py),
agent_install/agent_rollback for agent releases (agent/self_update.py); an agent before 0.2
ignores the agent_* kinds instead of taking them for a model.
"""

from __future__ import annotations

import json
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictInt

from edgefleet.contracts.base import Document, WireMessage
from edgefleet.contracts.shadow import ShadowSettings

MAX_PACKAGE_BYTES = 2 * 1024**3  # as the fleet's upload cap (fleet/body_limit.py)
JobKind = Literal["install", "rollback", "agent_install", "agent_rollback", "shadow_install", "shadow_remove"]


def _http_only(url: str | None) -> str | None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError("the package URL is not http(s)")  # no file://, ftp:// or data: from a job
    return url


class Probation(Document):
    """Sent to the agent with each install job; the last two only matter for agent releases."""

    smoke_runs: int = Field(default=3, ge=1, le=100)
    latency_budget_ms: float = Field(default=5000, gt=0)
    health_deadline_s: float = Field(
        default=120.0, gt=0, le=3600
    )  # a new agent's time to prove itself after its restart
    max_boots: int = Field(
        default=3, ge=1, le=20
    )  # starts of a new agent without a commit before the camera rolls back


class JobProbation(Probation, WireMessage):
    """Probation as a camera reads it from a job: settings a newer fleet adds are ignored."""

    model_config = WireMessage.model_config


class JobPackage(WireMessage):
    """The build a job installs; target..url are absent when the camera has it already (an agent
    rollback to the installed agent)."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"target", "sha256", "size", "url"})
    name: str
    version: str
    target: str | None = None
    sha256: str | None = None
    size: Annotated[StrictInt, Field(gt=0, le=MAX_PACKAGE_BYTES)] | None = None
    url: Annotated[str | None, AfterValidator(_http_only)] = None


class RollbackAuthorization(WireMessage):
    """A fleet-signed permission for one device to install an older version, for one job."""

    schema_: Literal[1] = Field(default=1, alias="schema")
    kind: Literal["rollback"] = "rollback"
    device: str
    job: str
    name: str
    version: str
    key_id: str | None = None  # which fleet key signed; a verifier tries every trusted key
    signature: str = ""  # base64 of the fleet key's signature over signed_bytes()

    model_config = WireMessage.model_config | {"populate_by_name": True}

    def signed_bytes(self) -> bytes:
        """Canonical JSON of everything but the signature."""
        body = self.model_dump(
            mode="json", by_alias=True, exclude={"signature"} | ({"key_id"} if self.key_id is None else set())
        )
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude={"key_id"} if self.key_id is None else set())


class JobDocument(WireMessage):
    """Revision 2 adds the shadow_install/shadow_remove kinds (edgefleet.contracts.shadow) and `shadow`,
    the settings a shadow_install runs with; an agent without the `shadow` feature refuses those kinds
    at parsing, and the fleet sends them only to agents that list the feature."""

    REVISION: ClassVar[int] = 2
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"shadow"})
    schema_: Literal[1] = Field(default=1, alias="schema")
    id: str | None = None  # the fleet always sets one; the earliest test fleets did not
    job: str
    kind: JobKind = "install"  # the first agents' fleets did not say
    rollout: int | None = None
    package: JobPackage
    probation: JobProbation = Field(default_factory=lambda: JobProbation())
    rollback_authorization: RollbackAuthorization | None = None
    shadow: ShadowSettings | None = None

    model_config = WireMessage.model_config | {"populate_by_name": True}

    def wire(self) -> dict[str, object]:
        skip = {"rollback_authorization"} | ({"shadow"} if self.shadow is None else set())
        body = self.model_dump(mode="json", by_alias=True, exclude=skip)
        body["package"] = self.package.wire()
        if self.rollback_authorization is not None:
            body["rollback_authorization"] = self.rollback_authorization.wire()
        return body
