"""The request side of a budget check: who is spending, on which tool.

Mirrors ``chio_metering::cost::CostMetadata`` closely enough that the Rust
JSON form parses unchanged; fields the budget does not use are ignored.

Refused here, at the edge, rather than half-way through a decision: a ``:``
in ``tool_server`` (the tool key is ``server:tool``, so ``("s1:x", "y")`` and
``("s1", "x:y")`` would share the counter ``s1:x:y``; with the server free of
``:`` the key splits back into one server and one tool), and strings that
are not Unicode (a lone surrogate cannot be encoded into a ledger key or an
OPA input).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .money import Units
from .text import lone_surrogate


class CostMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    receipt_id: str = Field(min_length=1)
    timestamp: Units
    session_id: str | None = None
    agent_id: str
    tool_server: str
    tool_name: str

    @field_validator("receipt_id", "session_id", "agent_id", "tool_server", "tool_name")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        bad = lone_surrogate(value) if value is not None else None
        if bad:
            raise ValueError(f"lone surrogate {bad} is not valid Unicode")
        return value

    @field_validator("tool_server")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError(f"must not contain ':' (the tool key is 'server:tool'), got {value!r}")
        return value

    @property
    def tool_key(self) -> str:
        """``"server:tool"``, the key of ``max_per_tool`` (as the Rust ``format!``)."""
        return f"{self.tool_server}:{self.tool_name}"

    def request_input(self) -> dict:
        """The ``input.request`` object of the Rego contract."""
        return {
            "receipt_id": self.receipt_id,
            "timestamp": self.timestamp,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "tool_server": self.tool_server,
            "tool_name": self.tool_name,
            "tool_key": self.tool_key,
        }
