"""The request side of a budget check: who is spending, on which tool.

Mirrors ``chio_metering::cost::CostMetadata`` closely enough that the Rust
JSON form parses unchanged; fields the budget does not use are ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .money import Units


class CostMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    receipt_id: str = Field(min_length=1)
    timestamp: Units
    session_id: str | None = None
    agent_id: str
    tool_server: str
    tool_name: str

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
