"""A workflow that ends the way it is told to, for the workflow metrics tests."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError


@workflow.defn(name="KtbTestEnding")
class Ending:
    """Ends by ``complete``, ``fail``, ``continue`` (as new, then complete) or ``wait`` (cancel)."""

    def __init__(self) -> None:
        self.mode = ""

    @workflow.run
    async def run(self, mode: str) -> str:
        """End as ``mode`` says, after one timer so the run spans two workflow tasks."""
        self.mode = mode
        await workflow.sleep(timedelta(milliseconds=10))
        if mode == "fail":
            raise ApplicationError("failing on purpose", non_retryable=True)
        if mode == "continue":
            workflow.continue_as_new("complete")
        if mode == "wait":
            await workflow.wait_condition(lambda: False)
        return mode

    @workflow.query(name="mode")
    def get_mode(self) -> str:
        """How this run was told to end (answered by replaying a closed run)."""
        return self.mode
