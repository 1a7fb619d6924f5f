"""Small workflows the integration tests drive through the bridge."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bridge.sdk.workflow import BridgeWorkflow


@workflow.defn(name="KtbTestNoop")
class Noop:
    """Returns at once: the start itself is what the test checks."""

    @workflow.run
    async def run(self, data: dict[str, Any]) -> str:
        """Return the order id."""
        return str(data.get("order_id"))


@workflow.defn(name="KtbTestRecorder")
class Recorder(BridgeWorkflow):
    """Records the payloads of ``note`` signals in arrival order until ``finish``."""

    def __init__(self) -> None:
        self._ktb_setup()
        self.received: list[int] = []
        self.finished = False

    @workflow.run
    async def run(self, data: dict[str, Any]) -> list[int]:
        """Wait for ``finish``; return what was noted."""
        await workflow.wait_condition(lambda: self.finished)
        return self.received

    @workflow.signal(name="note")
    def note(self, message: dict[str, Any]) -> None:
        """Append the payment amount as a sequence number, once per event id."""
        payload = self.ktb_accept(message)
        if payload is not None:
            self.received.append(int(payload["amount_cents"]))

    @workflow.signal(name="finish")
    def finish(self, message: dict[str, Any]) -> None:
        """Let the workflow complete."""
        if self.ktb_accept(message) is not None:
            self.finished = True

    @workflow.update(name="add")
    def add(self, message: dict[str, Any]) -> int:
        """Like ``note`` but as an update; returns how many were noted."""
        self.note(message)
        return len(self.received)

    @add.validator
    def validate_add(self, message: dict[str, Any]) -> None:
        """Reject negative amounts before the update is accepted."""
        if int((message.get("payload") or {}).get("amount_cents", 0)) < 0:
            raise ValueError("amount_cents must not be negative")

    @workflow.query(name="received")
    def get_received(self) -> list[int]:
        """The sequence numbers noted so far."""
        return list(self.received)


@workflow.defn(name="KtbTestWindow")
class WindowRun:
    """The target of a debounced or batched route: returns what its window held."""

    @workflow.run
    async def run(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The event id and the order id of every event of the window, in the order given."""
        return [{"event_id": e["event_id"], "order_id": e["payload"]["order_id"]} for e in events]
