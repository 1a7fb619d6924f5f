"""``ktb dlq discard``, ``ktb parked list`` and ``ktb bridge resume``: the operator's side
of the failure policies (``on_failure: park_key | pause``, ``bridge.policies``).

Exit codes: 0 done, 1 Kafka failed, 2 bad input (topic, letters, a partition that is
not paused) with nothing changed.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from bridge.cli.common import load_settings, run
from bridge.cli.dlq import dlq_app, letter_refs

bridge_app = typer.Typer(
    help="Run a bridge instance, or resume a partition a bridge paused.",
    invoke_without_command=True,
)
parked_app = typer.Typer(help="Records parked behind a dead letter of their key.",
                         no_args_is_help=True)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``bridge`` (its ``resume``) and ``parked`` to the ``ktb`` app; ``dlq discard``
    joins the ``dlq`` group."""
    app.add_typer(bridge_app, name="bridge")
    app.add_typer(parked_app, name="parked")


@dlq_app.command("discard")
def dlq_discard(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    offsets: Annotated[
        list[str],
        typer.Option("--offsets", help="The letters: OFFSET or PARTITION:OFFSET, commas"),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Give up on dead letters; the keys they block (park_key) are released, in order."""
    from bridge.policies import discard

    settings = load_settings()
    report = run(discard(settings, topic, letter_refs(offsets)))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    typer.echo(
        f"{topic}: {len(report.released)} keys released, "
        f"{len(report.not_blocking)} letters blocked nothing"
    )
    for item in report.released:
        typer.echo(
            f"  {item['letter']}: key {item['key']!r} of {item['topic']}[{item['partition']}], "
            f"{item['parked']} parked records released"
        )


@parked_app.command("list")
def parked_list(
    topic: Annotated[str, typer.Argument(help="The topic whose records are parked, e.g. orders")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per record")] = False,
) -> None:
    """What is parked on TOPIC now and why: each record with the letter that blocks its key."""
    from bridge.policies import list_parked

    records = run(list_parked(load_settings(), topic))
    if as_json:
        for record in records:
            typer.echo(json.dumps(record))
        return
    if not records:
        typer.echo(f"{topic}: nothing parked")
        return
    typer.echo(f"{'ORIGINAL':>12}  {'KEY':20}  {'EVENT TYPE':32}  BLOCKED BY")
    for r in records:
        where = f"{r['partition']}:{r['offset']}"
        typer.echo(
            f"{where:>12}  {str(r['key'])[:20]:20}  {str(r['event_type'])[:32]:32}  "
            f"{r['blocked_by']}"
        )


@bridge_app.command("resume")
def bridge_resume(
    topic: Annotated[str, typer.Argument(help="The paused partition's topic")],
    partition: Annotated[int, typer.Argument(help="The paused partition")],
    skip: Annotated[
        bool, typer.Option("--skip", help="Dead-letter the record it stopped at and go on")
    ] = False,
) -> None:
    """Resume a paused partition (pause): try its record again, or --skip dead-letters it."""
    from bridge.policies import resume

    pause = run(resume(load_settings(), topic, partition, skip=skip))
    typer.echo(
        f"{topic}[{partition}] paused at offset {pause.offset} ({pause.error_type}: "
        f"{pause.reason}): {'skip' if skip else 'retry'} requested"
    )
