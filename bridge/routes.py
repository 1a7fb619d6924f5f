"""Declarative routes: which event becomes which Temporal action.

``routes.yaml`` is validated at start-up into ``RoutesConfig``; ``Router`` compiles
every route once (CEL condition, workflow id template, argument paths) and
turns a matching ``Event`` into a plain ``Action`` value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.codec import SchemaCatalog
from bridge.conditions import FastCondition, Undecided, checker, compile_fast
from bridge.decoding import EnvelopeSpec
from bridge.envelope import Event
from bridge.errors import ConfigError, RouteError
from bridge.flow import BatchSpec, DebounceSpec, WindowPolicy, check_window_options, window_policy
from bridge.pacing import RateLimitSpec
from bridge.scheduling import (
    FAIRNESS_WEIGHT_MAX,
    FAIRNESS_WEIGHT_MIN,
    Schedule,
    ScheduleTemplates,
)
from bridge.templates import (
    ROOT_NAMES,
    Template,
    condition_paths,
    getter,
    reads_plan,
    select,
)
from bridge.tenancy import scoped_workflow_id

if TYPE_CHECKING:
    import cel


class ActionKind(StrEnum):
    """What a route does in Temporal."""

    START = "start"
    SIGNAL = "signal"
    SIGNAL_WITH_START = "signal_with_start"
    UPDATE_WITH_START = "update_with_start"
    CANCEL = "cancel"
    TERMINATE = "terminate"


STARTING = {ActionKind.START, ActionKind.SIGNAL_WITH_START, ActionKind.UPDATE_WITH_START}


class FailurePolicy(StrEnum):
    """What a record that cannot be acted on does to the records after it (``on_failure``)."""

    DEAD_LETTER = "dead_letter"
    """It is dead-lettered and every later record goes on."""
    PARK_KEY = "park_key"
    """It is dead-lettered and later records of its key on its partition are parked."""
    PAUSE = "pause"
    """Its partition stops at it until an operator resumes or skips it."""


STRICTNESS = (FailurePolicy.DEAD_LETTER, FailurePolicy.PARK_KEY, FailurePolicy.PAUSE)


IdReusePolicy = Literal["reject_duplicate", "allow_duplicate_failed_only", "allow_duplicate"]
IdConflictPolicy = Literal["use_existing", "fail"]


class RouteSpec(BaseModel):
    """One route as written in ``routes.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str
    type: str
    when: str | None = None
    action: ActionKind
    workflow: str | None = None
    task_queue: str | None = None
    workflow_id: str
    args: str | list[str] = "data"
    signal: str | None = None
    update: str | None = None
    on_duplicate: Literal["ignore", "dead_letter"] = "ignore"
    on_failure: FailurePolicy = Field(
        FailurePolicy.DEAD_LETTER,
        description="What a record this route cannot act on does to the records after it: "
        "dead_letter (they go on), park_key (later records of its key wait in "
        "<topic>.parked until the letter is redriven or discarded) or pause (the "
        "partition stops until `ktb bridge resume`)",
    )
    id_reuse_policy: IdReusePolicy = "reject_duplicate"
    id_conflict_policy: IdConflictPolicy = "use_existing"
    search_attributes: dict[str, str] = Field(default_factory=dict)
    memo: dict[str, str] = Field(default_factory=dict)
    reason: str = "{type} {id}"
    tenant_scoped_ids: bool = Field(
        True,
        description="Prefix workflow ids with the event's tenant (`<tenant>:<id>`) when the "
        "event has one; false only where ids already name their tenant or for workflows "
        "started before scoping (the target's tenant is checked either way)",
    )
    debounce: DebounceSpec | None = Field(
        None, description="One run per quiet period of a workflow id, with every event of it"
    )
    batch: BatchSpec | None = Field(
        None, description="One run per max_events events of a workflow id, or per max_wait"
    )

    # Scheduling and pacing (README, Routes: priority, fairness, start delay, rate limit).
    priority: StrictInt | str | None = Field(
        None, description="Temporal priority key (1 = highest): a number or a template"
    )
    fairness_key: str | None = Field(None, description="Temporal fairness key: a template")
    fairness_weight: float | None = Field(
        None, ge=FAIRNESS_WEIGHT_MIN, le=FAIRNESS_WEIGHT_MAX, description="Weight of the key"
    )
    start_delay: str | None = Field(
        None, description="A template: a duration (30s, 5m, PT5M) or an RFC 3339 time"
    )
    rate_limit: RateLimitSpec | None = Field(
        None, description="Actions per second of this route, per bridge instance"
    )

    @field_validator("priority", "fairness_key", "fairness_weight", "start_delay")
    @classmethod
    def _starting_only(cls, value: Any, info: ValidationInfo) -> Any:
        action = info.data.get("action")
        if value is None or action is None:
            return value
        if action not in STARTING:
            raise ValueError(
                f"applies to actions that start a workflow ({', '.join(sorted(STARTING))}), "
                f"not {action.value}"
            )
        if info.field_name == "start_delay" and action is ActionKind.UPDATE_WITH_START:
            raise ValueError("Temporal does not delay an update-with-start")
        if info.field_name == "priority" and isinstance(value, int) and value < 1:
            raise ValueError("must be a positive integer (1 is the highest priority)")
        return value

    @model_validator(mode="after")
    def _weight_needs_key(self) -> RouteSpec:
        if self.fairness_weight is not None and self.fairness_key is None:
            raise ValueError("fairness_weight needs a fairness_key")
        return self

    @model_validator(mode="after")
    def _required_per_action(self) -> RouteSpec:
        need: list[str] = []
        if self.action in STARTING:
            need += ["workflow", "task_queue"]
        if self.action in (ActionKind.SIGNAL, ActionKind.SIGNAL_WITH_START):
            need.append("signal")
        if self.action is ActionKind.UPDATE_WITH_START:
            need.append("update")
        missing = [n for n in need if not getattr(self, n)]
        if missing:
            raise ValueError(f"action {self.action.value} needs {', '.join(missing)}")
        scheduled = [
            name
            for name in ("priority", "fairness_key", "fairness_weight", "start_delay")
            if getattr(self, name) is not None
        ]
        check_window_options(self.debounce, self.batch, self.action.value, scheduled)
        return self


class SubjectStrategy(StrEnum):
    """How a topic's records name their Schema Registry subject (Confluent's strategies)."""

    TOPIC = "topic"
    """``<topic>-value``: one subject per topic."""
    RECORD = "record"
    """``<record full name>``: one subject per event type, whatever the topic."""
    TOPIC_RECORD = "topic_record"
    """``<topic>-<record full name>``: one subject per topic and event type."""


PublishFormat = Literal["avro", "json", "confluent-avro", "confluent-json"]
REGISTRY_FORMATS = frozenset({"confluent-avro", "confluent-json"})
"""Formats in Schema Registry framing (``00`` + schema id + Avro or JSON)."""


class PublishSpec(BaseModel):
    """How events published to one topic are written (``publish:`` in ``routes.yaml``).

    CloudEvents binary-mode headers go on every record whatever the format; the
    format decides the value: ``avro`` (single-object) and ``json`` as ktb writes
    them, ``confluent-avro`` and ``confluent-json`` in Schema Registry framing under
    the subject ``subject_strategy`` names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: PublishFormat | None = Field(
        None, description="Unset: what the publishing activity asks for (Avro by default)"
    )
    subject_strategy: SubjectStrategy = SubjectStrategy.TOPIC
    auto_register: bool = Field(
        False,
        description="Register the schema on first use; false (production): the subject "
        "must hold the schema already (`ktb schemas register`)",
    )
    types: list[str] = Field(
        default_factory=list,
        description="Event types published here: the subjects `ktb schemas register` "
        "and `ktb schemas check` cover",
    )

    @property
    def registry(self) -> bool:
        """Whether records of this topic are in Schema Registry framing."""
        return self.format in REGISTRY_FORMATS

    @model_validator(mode="after")
    def _registry_options(self) -> PublishSpec:
        if not self.registry and (
            self.auto_register or "subject_strategy" in self.model_fields_set
        ):
            raise ValueError(
                "subject_strategy and auto_register apply to confluent-avro and confluent-json only"
            )
        return self


class RoutesConfig(BaseModel):
    """The whole routes file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: list[RouteSpec]
    unmatched: Literal["skip", "dead_letter"] = "skip"
    topics: dict[str, int] = Field(
        default_factory=dict,
        description="Topics the deployment uses (egress too) and their partition counts",
    )
    envelope: dict[str, EnvelopeSpec] = Field(
        default_factory=dict,
        description="Per topic: how records without CloudEvents headers become events",
    )
    publish: dict[str, PublishSpec] = Field(
        default_factory=dict,
        description="Per topic: how outcome and compensation events are written",
    )

    def search_attributes(self) -> dict[str, str]:
        """The custom search attributes the routes set (``search_attributes:``), by name, with
        their Temporal type: provisioning registers them beside the bridge's own."""
        return {name: "Keyword" for r in self.routes for name in r.search_attributes}

    def topic_partitions(self, default: int = 3) -> dict[str, int]:
        """Every topic to create: declared ones, route topics and their dead-letter topics."""
        out = dict(self.topics)
        for r in self.routes:
            out.setdefault(r.topic, default)
            out.setdefault(r.topic + ".dlq", 1)
        return out

    @model_validator(mode="after")
    def _unique_names(self) -> RoutesConfig:
        seen: set[str] = set()
        for r in self.routes:
            if r.name in seen:
                raise ValueError(f"route name {r.name!r} is used twice")
            seen.add(r.name)
        return self

    @classmethod
    def load(cls, path: Path) -> RoutesConfig:
        """Parse and validate a routes file; errors name the route and the field."""
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read routes file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, origin: str = "routes") -> RoutesConfig:
        """Validate already-parsed YAML/JSON data."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid routes:\n" + _describe(raw, exc)) from exc


def _describe(raw: Any, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
            try:
                name = raw["routes"][loc[1]].get("name", f"#{loc[1]}")
            except (TypeError, KeyError, IndexError, AttributeError):
                name = f"#{loc[1]}"
            field_path = ".".join(str(p) for p in loc[2:]) or "(route)"
            where = f"route {name!r}, field {field_path}"
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)


# --- Compiled routes -------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """A plain value describing one Temporal action, built from one event by one route."""

    kind: ActionKind
    route: str
    workflow_id: str
    event_id: str
    workflow_type: str | None = None
    task_queue: str | None = None
    args: tuple[Any, ...] = ()
    """Workflow start arguments (starting actions only)."""
    message: tuple[Any, ...] = ()
    """Signal or update arguments: one ``bridge_signal`` value carrying the event id."""
    signal: str | None = None
    update: str | None = None
    id_reuse_policy: IdReusePolicy = "reject_duplicate"
    id_conflict_policy: IdConflictPolicy = "use_existing"
    on_duplicate: Literal["ignore", "dead_letter"] = "ignore"
    search_attributes: Mapping[str, str] = field(default_factory=dict)
    memo: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    schedule: Schedule | None = None
    """Priority, fairness and start delay of a starting action; ``None``: Temporal's defaults."""
    rate_limit: RateLimitSpec | None = None
    """The route's rate limit: the action waits for a token of the route's bucket."""
    window: WindowPolicy | None = None
    """Set for a route with ``debounce`` or ``batch``: the event goes into its window's
    collector, which starts ``workflow_type`` once the window closes."""


def bridge_signal(event: Event, payload: Any) -> dict[str, Any]:
    """The single argument every bridge signal and update carries.

    The event id lets the workflow-side helper drop repeats.
    """
    return {
        "event_id": event.id,
        "event_type": event.type,
        "tenant_id": event.tenant_id,
        "payload": payload,
    }


class CompiledRoute:
    """A route with its condition, templates and argument paths compiled."""

    def __init__(self, spec: RouteSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.condition: Callable[[dict[str, Any] | cel.Context], Any] | None = None
        self.condition_context: Callable[..., cel.Context] | None = None
        """Builds the context ``condition`` evaluates in (``None`` without a condition)."""
        self.condition_reads: list[tuple[str, ...]] = []
        self.fast_condition: FastCondition | None = None
        """The condition in Python where it is in the subset ``bridge.conditions`` compiles."""
        if spec.when:
            import cel  # imported when a route has a condition: it takes long to import

            try:
                program = cel.compile(spec.when)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"route {spec.name!r}, field when: {exc}") from exc
            self.condition = program.execute
            self.condition_context = cel.Context
            self.condition_reads = condition_paths(spec.when)
            fast = compile_fast(spec.when)
            # It may read only what the CEL context would hold (the reads plan's paths).
            if fast is not None and set(fast[1]) <= set(self.condition_reads):
                self.fast_condition = fast[0]
        try:
            self.workflow_id = Template.parse(spec.workflow_id)
            self.reason = Template.parse(spec.reason)
            self.search_attributes = {
                k: Template.parse(v) for k, v in spec.search_attributes.items()
            }
            self.memo = {k: Template.parse(v) for k, v in spec.memo.items()}
            self.schedule = ScheduleTemplates(
                spec.priority, spec.fairness_key, spec.fairness_weight, spec.start_delay
            )
        except ConfigError as exc:
            raise ConfigError(f"route {spec.name!r}: {exc.message}") from exc
        arg_exprs = [spec.args] if isinstance(spec.args, str) else list(spec.args)
        self.arg_paths = [tuple(a.split(".")) for a in arg_exprs]
        self.arg_getters = [getter(p) for p in self.arg_paths]
        self.window = window_policy(spec.debounce, spec.batch)
        kind = spec.action
        self.starting = kind in STARTING
        # A windowed start sends its event into the window as a message, like a signal.
        self.sends_message = self.window is not None or kind in (
            ActionKind.SIGNAL,
            ActionKind.SIGNAL_WITH_START,
            ActionKind.UPDATE_WITH_START,
        )
        self.constant = {
            "kind": kind, "route": self.name, "workflow_type": spec.workflow,
            "task_queue": spec.task_queue, "signal": spec.signal, "update": spec.update,
            "id_reuse_policy": spec.id_reuse_policy,
            "id_conflict_policy": spec.id_conflict_policy, "on_duplicate": spec.on_duplicate,
            "rate_limit": spec.rate_limit, "window": self.window,
        }  # fmt: skip
        """The fields of this route's actions that do not depend on the event."""
        for path in self.arg_paths:
            if path[0] not in ROOT_NAMES:
                raise ConfigError(
                    f"route {spec.name!r}, field args: {'.'.join(path)!r} must start with one "
                    f"of {', '.join(sorted(ROOT_NAMES))}"
                )

    def matches(self, context: dict[str, Any] | cel.Context) -> bool:
        """Evaluate the condition; errors become ``RouteError`` (dead-lettered)."""
        if self.condition is None:
            return True
        try:
            result = self.condition(context)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise RouteError(f"route {self.name!r}: condition failed: {exc}") from exc
        if not isinstance(result, bool):
            raise RouteError(f"route {self.name!r}: condition returned {result!r}, not a bool")
        return result

    def build(self, event: Event, context: Mapping[str, Any]) -> Action:
        """Build the action for an event that matched this route."""
        try:
            workflow_id = self.workflow_id.render(context)
            args = tuple([get(context) for get in self.arg_getters])
            extra_sa = (
                {k: t.render(context) for k, t in self.search_attributes.items()}
                if self.search_attributes
                else {}
            )
            memo = {k: t.render(context) for k, t in self.memo.items()} if self.memo else {}
            reason = self.reason.render(context)
            schedule = self.schedule.resolve(context)
        except KeyError as exc:
            raise RouteError(
                f"route {self.name!r}: event has no value for field {exc.args[0]!r}"
            ) from exc
        except RouteError as exc:
            raise RouteError(f"route {self.name!r}: {exc.message}") from exc
        if self.spec.tenant_scoped_ids:
            workflow_id = scoped_workflow_id(event.tenant_id, workflow_id)
        message: tuple[Any, ...] = ()
        if self.sends_message:
            message = (bridge_signal(event, args[0] if len(args) == 1 else list(args)),)
        return new_action(
            {
                **self.constant,
                "workflow_id": workflow_id,
                "event_id": event.id,
                "args": args if self.starting else (),
                "message": message,
                "search_attributes": extra_sa,
                "memo": memo,
                "reason": reason,
                "schedule": schedule,
            }
        )


def new_action(values: dict[str, Any]) -> Action:
    """``Action(**values)`` for a value of every field, without the frozen dataclass's
    ``object.__setattr__`` per field (most of the cost of building an action). Only
    for values built as ``Action`` takes them: it has no validation to skip."""
    action = object.__new__(Action)
    action.__dict__.update(values)
    return action


class Router:
    """Finds the first matching route for an event and builds its action."""

    def __init__(self, config: RoutesConfig) -> None:
        self.config = config
        self.routes = [CompiledRoute(spec) for spec in config.routes]
        self._index: dict[tuple[str, str], list[CompiledRoute]] = {}
        for route in self.routes:
            self._index.setdefault((route.spec.topic, route.spec.type), []).append(route)
        self._by_name = {route.name: route for route in self.routes}
        self._strictest: dict[str, FailurePolicy] = {}
        for route in self.routes:
            current = self._strictest.get(route.spec.topic, FailurePolicy.DEAD_LETTER)
            self._strictest[route.spec.topic] = max(
                current, route.spec.on_failure, key=STRICTNESS.index
            )
        self._reads = {
            key: reads_plan(p for route in candidates for p in route.condition_reads)
            for key, candidates in self._index.items()
        }
        self._convertible = {
            key: checker(self._reads[key]) for key, candidates in self._index.items()
            if any(route.fast_condition is not None for route in candidates)
        }  # fmt: skip
        """Per (topic, type) with a fast condition: whether an event's fields convert."""

    @classmethod
    def from_file(cls, path: Path) -> Router:
        """Load, validate and compile a routes file."""
        return cls(RoutesConfig.load(path))

    @property
    def topics(self) -> list[str]:
        """Every topic some route reads, sorted."""
        return sorted({r.spec.topic for r in self.routes})

    @property
    def dead_letter_unmatched(self) -> bool:
        """True when unmatched events go to the dead-letter topic instead of being skipped."""
        return self.config.unmatched == "dead_letter"

    @property
    def uses_failure_policies(self) -> bool:
        """Whether some route parks keys or pauses partitions (``on_failure``)."""
        return any(r.spec.on_failure is not FailurePolicy.DEAD_LETTER for r in self.routes)

    def failure_policy(self, topic: str, route: str | None) -> FailurePolicy:
        """The ``on_failure`` of ``route``; for a record whose route is not known (it fails
        to decode, or matches none) the strictest policy among ``topic``'s routes."""
        if route is not None:
            found = self._by_name.get(route)
            if found is not None:
                return found.spec.on_failure
        return self._strictest.get(topic, FailurePolicy.DEAD_LETTER)

    def only(self, names: Iterable[str]) -> Router:
        """A router restricted to the named routes (for ``ktb replay --route``)."""
        wanted = set(names)
        unknown = wanted - {r.name for r in self.routes}
        if unknown:
            raise ConfigError(f"unknown route(s): {', '.join(sorted(unknown))}")
        return Router(
            RoutesConfig(
                routes=[r.spec for r in self.routes if r.name in wanted],
                unmatched=self.config.unmatched,
                envelope=self.config.envelope,
            )
        )

    def match(self, event: Event) -> tuple[CompiledRoute, dict[str, Any]] | None:
        """The first route whose topic, type and condition match, with the event context."""
        key = (event.topic or "", event.type)
        candidates = self._index.get(key)
        if not candidates:
            return None
        context = event.as_context()
        conditions: cel.Context | None = None
        reads = self._reads[key]
        # Python conditions may answer only when CEL would have converted every field
        # the candidates read: then skipping the conversion skips no error.
        convertible = self._convertible.get(key)
        fast = convertible is not None and convertible(context)
        for route in candidates:
            if fast and route.fast_condition is not None:
                try:
                    if route.fast_condition(context):
                        return route, context
                    continue
                except Undecided:
                    pass  # CEL decides, with its own errors
            if route.condition_context is not None and conditions is None:
                # Converting values to CEL dominates the cost of a condition, so the
                # candidates share one context holding only the fields they read.
                try:
                    conditions = route.condition_context(variables=select(context, reads))
                except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                    raise RouteError(f"route {route.name!r}: condition failed: {exc}") from exc
            if route.matches(conditions if conditions is not None else context):
                return route, context
        return None

    def route(self, event: Event) -> Action | None:
        """Match and build in one step; ``None`` when no route matches."""
        found = self.match(event)
        if found is None:
            return None
        route, context = found
        return route.build(event, context)


# --- ktb routes check ---------------------------------------------------------------


@dataclass(frozen=True)
class RouteProblem:
    """One thing wrong with a route, for ``ktb routes check``."""

    route: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"route {self.route!r}, field {self.field}: {self.message}"


def _check_path(catalog_fields: frozenset[str], path: Sequence[str]) -> str | None:
    if path[0] != "data":
        return None if len(path) == 1 else f"{'.'.join(path)!r}: {path[0]} has no fields"
    if len(path) == 1:
        return None
    dotted = ".".join(p for p in path[1:] if not p.isdigit())
    if dotted not in catalog_fields:
        return f"{'.'.join(path)!r} is not a field of the event's schema"
    return None


def check_routes(config: RoutesConfig, catalog: SchemaCatalog) -> list[RouteProblem]:
    """Every template, condition and argument field checked against the schemas."""
    problems: list[RouteProblem] = []
    for spec in config.routes:
        try:
            compiled = CompiledRoute(spec)
        except ConfigError as exc:
            problems.append(RouteProblem(spec.name, "(route)", exc.message))
            continue
        if spec.type not in catalog:
            problems.append(
                RouteProblem(spec.name, "type", f"no schema for event type {spec.type!r}")
            )
            continue
        fields = catalog.get(spec.type).fields
        checks: list[tuple[str, Sequence[str]]] = [
            ("workflow_id", p) for p in compiled.workflow_id.paths()
        ]
        checks += [("args", p) for p in compiled.arg_paths]
        checks += [("reason", p) for p in compiled.reason.paths()]
        for key, tpl in compiled.search_attributes.items():
            checks += [(f"search_attributes.{key}", p) for p in tpl.paths()]
        for key, tpl in compiled.memo.items():
            checks += [(f"memo.{key}", p) for p in tpl.paths()]
        checks += compiled.schedule.paths()
        if spec.when:
            checks += [("when", p) for p in condition_paths(spec.when)]
        for field_name, path in checks:
            if path[0] not in ROOT_NAMES:
                problems.append(
                    RouteProblem(spec.name, field_name, f"{'.'.join(path)!r} is not an event field")
                )
                continue
            message = _check_path(fields, path)
            if message:
                problems.append(RouteProblem(spec.name, field_name, message))
    for topic, publishing in sorted(config.publish.items()):
        for type_name in publishing.types:
            if type_name not in catalog:
                problems.append(
                    RouteProblem(
                        "(publish)", f"publish.{topic}.types", f"no schema for {type_name!r}"
                    )
                )
    read = {spec.topic for spec in config.routes}
    for topic in sorted(set(config.envelope) - read):
        problems.append(
            RouteProblem("(envelope)", f"envelope.{topic}", f"no route reads topic {topic!r}")
        )
    return problems
