"""Classification of Temporal errors into transient and permanent."""

from __future__ import annotations

from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc.status_pb2 import Status
from temporalio.api.errordetails.v1 import NamespaceNotFoundFailure, NotFoundFailure
from temporalio.service import RPCError, RPCStatusCode

from bridge.dispatch import CheckedRuns
from bridge.errors import ActionRejectedError, TransientError
from bridge.routes import Action, ActionKind
from bridge.temporal.requests import classify

ACTION = Action(kind=ActionKind.SIGNAL, route="r", workflow_id="wf-1", event_id="e-1")


def rpc_error(code: RPCStatusCode, detail: object | None = None) -> RPCError:
    status = Status(code=int(code), message="boom")
    if detail is not None:
        packed = AnyProto()
        packed.Pack(detail)
        status.details.append(packed)
    return RPCError("boom", code, status.SerializeToString())


def test_unavailable_and_deadline_are_transient() -> None:
    for code in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED,
                 RPCStatusCode.RESOURCE_EXHAUSTED):  # fmt: skip
        assert isinstance(classify(rpc_error(code), ACTION), TransientError)


def test_missing_namespace_is_transient_but_missing_workflow_is_not() -> None:
    missing_ns = rpc_error(RPCStatusCode.NOT_FOUND, NamespaceNotFoundFailure(namespace="default"))
    assert isinstance(classify(missing_ns, ACTION), TransientError)
    missing_wf = rpc_error(RPCStatusCode.NOT_FOUND, NotFoundFailure())
    assert isinstance(classify(missing_wf, ACTION), ActionRejectedError)
    assert isinstance(classify(rpc_error(RPCStatusCode.NOT_FOUND), ACTION), ActionRejectedError)


def test_invalid_argument_is_permanent_and_names_the_workflow() -> None:
    err = classify(rpc_error(RPCStatusCode.INVALID_ARGUMENT), ACTION)
    assert isinstance(err, ActionRejectedError)
    assert "wf-1" in str(err) and err.event_id == "e-1"


def test_checked_runs_keep_the_newest_and_forget_closed_ones() -> None:
    runs = CheckedRuns(limit=2)
    runs.put("a", "r1", "acme")
    runs.put("b", "r2", None)
    runs.put("a", "r3", "acme")
    runs.put("c", "r4", "globex")
    assert runs.get("b") is None  # the oldest entry went
    assert runs.get("a") == ("r3", "acme") and runs.get("c") == ("r4", "globex")
    runs.forget("a")
    assert runs.get("a") is None
