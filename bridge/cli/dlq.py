"""``ktb dlq list|show|redrive``: inspect and redrive dead-letter topics.

Exit codes: 0 done, 1 Kafka failed or redrive refused letters, 2 bad input
(topic, letter offsets) with nothing redriven.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bridge.cli.common import fail, load_settings, run
from bridge.errors import InvalidRequestError

if TYPE_CHECKING:  # the dlq package loads lazily, per command
    from bridge.dlq import Letter

dlq_app = typer.Typer(help="Inspect and redrive dead-letter topics.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``dlq`` command group to the ``ktb`` app."""
    app.add_typer(dlq_app, name="dlq")


def letter_refs(offsets: list[str] | None) -> list[Any]:
    """Letters named on the command line (``OFFSET`` or ``PARTITION:OFFSET``, commas);
    a malformed one ends the command with exit code 2."""
    from bridge.dlq import LetterRef

    out = []
    for item in offsets or []:
        for part in item.split(","):
            if part.strip():
                try:
                    out.append(LetterRef.parse(part))
                except InvalidRequestError as exc:
                    fail(exc.message)
    return out


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    error_type: Annotated[str | None, typer.Option(help="Only this ktb_error_type")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter")] = False,
) -> None:
    """List dead letters: offset, error type and message, original coordinates, redrives,
    records parked behind each."""
    from bridge.dlq import iter_letters
    from bridge.policies import parked_counts

    settings = load_settings()

    def show_page(letters: list[Letter], first: bool) -> None:
        if first and not as_json:
            typer.echo(
                f"{'LETTER':>8}  {'ERROR TYPE':17}  {'ORIGINAL':28}  {'REDRIVES':8}  MESSAGE"
            )
        for letter in letters:
            s = letter.summary()
            s["parked"] = parked.get(str(letter.ref), 0)
            if as_json:
                typer.echo(json.dumps(s))
                continue
            where = f"{s['original_topic']}[{s['original_partition']}]@{s['original_offset']}"
            redriven = s["redriven"]
            count = str(s["redrive_count"]) + (" ->" if redriven else "")
            message = (s["error_message"] or "").replace("\n", " ")
            if not letter.holds_record:
                message = f"[{s['original_error_type']}: {s['original_error_message']}] {message}"
            if redriven:
                message = (
                    f"[redriven to {redriven['topic']}[{redriven['partition']}]"
                    f"@{redriven['offset']}] {message}"
                )
            if s["copy_of"]:
                message = f"[copy of {s['copy_of']}] {message}"
            if s["parked"]:
                message = f"[holds {s['parked']} parked] {message}"
            error = s["error_type"] or "-"
            typer.echo(f"{letter.ref!s:>8}  {error:17}  {where:28}  {count:8}  {message[:120]}")

    parked: dict[str, int] = {}

    async def list_all() -> int:
        # A page at a time: the memory of a listing does not grow with the topic.
        parked.update(await parked_counts(settings, topic))
        listed = 0
        async for letters in iter_letters(settings, topic, error_type=error_type):
            show_page(letters, listed == 0)
            listed += len(letters)
        return listed

    if not run(list_all()) and not as_json:
        typer.echo(f"{topic}: no dead letters" + (f" of type {error_type}" if error_type else ""))


@dlq_app.command("show")
def dlq_show(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    offset: Annotated[str, typer.Argument(help="OFFSET or PARTITION:OFFSET")],
) -> None:
    """Print one dead letter as JSON: error, original coordinates, headers, decoded data.

    A too_large_to_copy letter holds no record: the record is read from its original
    topic at the letter's coordinates (original_record says whether it is still there).
    """
    from bridge.codec import SchemaCatalog
    from bridge.dlq import show

    settings = load_settings()
    refs = letter_refs([offset])
    if len(refs) != 1:
        fail("give one letter: OFFSET or PARTITION:OFFSET")
    (ref,) = refs
    catalog = SchemaCatalog.from_dir(settings.schemas_dir)
    typer.echo(json.dumps(run(show(settings, topic, ref, catalog)), indent=2, default=str))


@dlq_app.command("redrive")
def dlq_redrive(
    topic: Annotated[str, typer.Argument(help="Dead-letter topic, e.g. orders.dlq")],
    error_type: Annotated[str | None, typer.Option(help="Only letters of this error type")] = None,
    offsets: Annotated[
        list[str] | None,
        typer.Option("--offsets", help="Only these letters: OFFSET or PARTITION:OFFSET, commas"),
    ] = None,
    max_redrives: Annotated[
        int | None, typer.Option(help="Refuse letters redriven this often (KTB_DLQ_MAX_REDRIVES)")
    ] = None,
    again: Annotated[
        bool, typer.Option("--again", help="Also republish letters an earlier redrive sent")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Republish dead letters to their original topics with ktb_redrive_count incremented."""
    from bridge.dlq import redrive

    settings = load_settings()
    refs = letter_refs(offsets)
    report = run(
        redrive(
            settings, topic, error_type=error_type, refs=refs, max_redrives=max_redrives,
            again=again,
        )
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        typer.echo(
            f"{topic}: {report.selected} selected, {len(report.redriven)} redriven, "
            f"{len(report.refused)} refused, {len(report.already)} already redriven"
            + (f", {len(report.copies)} copies skipped" if report.copies else "")
        )
        for mark in report.redriven:
            typer.echo(
                f"  {mark.dlq_partition}:{mark.dlq_offset} -> "
                f"{mark.topic}[{mark.partition}]@{mark.offset} (redrive {mark.redrive_count})"
            )
        for refused in report.refused:
            typer.echo(f"  {refused['letter']} refused: {refused['reason']}")
    if report.refused:
        raise typer.Exit(1)
