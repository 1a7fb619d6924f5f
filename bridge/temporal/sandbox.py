"""The workflow sandbox of workers that run the library's own workflows.

The window collector (``bridge.sdk.window``) and the replay workflow live in the
``bridge`` package, whose modules reach I/O modules (Kafka clients, settings): the
sandbox uses those modules as they are (the workflows touch none of them) instead
of importing them again per run, which it would refuse.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

BRIDGE_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("bridge")
)
"""The runner of every worker ``open_worker`` builds, and of the replay worker."""
