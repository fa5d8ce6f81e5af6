"""What the API's request bodies and parameters may hold, as pydantic models.

The routes in `server.routes.api` take their bodies through `JsonBody`, which
parses strict JSON with `server.protocol.loads` (no bare NaN/Infinity, and any
`Content-Type`, as before) and validates the result with a model. A refusal
becomes a `RequestValidationError`; `validation_error` turns every one of
those, the framework's own for query and path parameters included, into the
documented `{"error": {"status": 400, "message": …}}` (`404` for a run id
that cannot exist).

A new command is one more model with a `kind: Literal[…]` in `Command`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from server.errors import BadRequest
from server.protocol import (
    MAX_COMPARE,
    MAX_INT,
    MAX_NAME,
    RUN_ID_PATTERN,
    RUN_STATUSES,
    FrameError,
    loads,
)
from server.runs_query import MAX_Q, SORTS, RunFilter

__all__ = [
    "ERROR_RESPONSES",
    "AnyCommand",
    "BulkDelete",
    "CheckpointCommand",
    "Command",
    "ErrorResponse",
    "JsonBody",
    "MetricsQuery",
    "PauseCommand",
    "RenameRun",
    "ResumeCommand",
    "RunId",
    "RunsQuery",
    "Scope",
    "SetCommand",
    "SetLrCommand",
    "StopCommand",
    "bulk_delete_body",
    "command_args",
    "command_body",
    "rename_body",
    "validation_error",
]

T = TypeVar("T")

Scope = Literal["epoch", "batch"]
"""A metric point's scope: `server.protocol.SCOPES` (the tests check they agree)."""

Status = Literal["running", "paused", "finished", "stopped", "failed", "disconnected"]
"""A run's status: `server.protocol.RUN_STATUSES` (checked below, at import)."""
assert set(Status.__args__) == set(RUN_STATUSES), "Status and RUN_STATUSES disagree"  # type: ignore[attr-defined]

SortName = Literal[
    "started", "-started", "name", "-name", "project", "-project",
    "status", "-status", "duration", "-duration", "epochs", "-epochs",
]  # fmt: skip
"""A runs-list sort: a name of `server.runs_query.SORTS`, `-` first for descending."""
assert {s.lstrip("-") for s in SortName.__args__} == set(SORTS)  # type: ignore[attr-defined]

RunId = Annotated[
    str,
    Path(
        pattern=f"^{RUN_ID_PATTERN}$",
        description="The run's id: 32 lowercase hex characters. Any other is an unknown run (404).",
        examples=["5d0c6f1e9a7b4c32b1a0e2f4d6c8b0a1"],
    ),
]


# -- bodies ------------------------------------------------------------------------


def _storable(text: str) -> str:
    """`text`, if SQLite can store it: JSON's "\\ud800" escapes make unpaired surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("String should be Unicode text, without unpaired surrogates") from None
    return text


Storable = AfterValidator(_storable)
"""Put last in a `str` field's `Annotated`: it refuses what SQLite cannot store."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StopCommand(_Body):
    """Stop training at the next batch boundary (saving the model first, if asked)."""

    kind: Literal["stop"]
    checkpoint: bool = Field(
        default=False,
        strict=True,
        description="Save a checkpoint (as the `checkpoint` command does), then stop.",
        examples=[True],
    )


class SetLrCommand(_Body):
    """Set the optimizer's learning rate from the next batch on."""

    kind: Literal["set_lr"]
    lr: float = Field(
        strict=True,  # a number: no "0.1", no true
        gt=0,
        allow_inf_nan=False,
        description="The new learning rate: a finite number > 0.",
        examples=[0.001],
    )


class CheckpointCommand(_Body):
    """Save the model (`model.save`) into the callback's `checkpoint_dir`."""

    kind: Literal["checkpoint"]


class PauseCommand(_Body):
    """Hold training at the next batch boundary until `resume` (or `stop`)."""

    kind: Literal["pause"]


class ResumeCommand(_Body):
    """Continue a paused training at the step where it paused."""

    kind: Literal["resume"]


KNOB_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
"""`optimizer.momentum`, `early_stopping.patience`, `user.dropout`: dotted identifiers."""


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("Input should be a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ValueError("Input should be an integer from -(2**63-1) to 2**63-1")
    return value


class SetCommand(_Body):
    """Set one knob (see the run's `knobs`) from the next batch on."""

    kind: Literal["set"]
    name: Annotated[str, StringConstraints(strict=True, max_length=MAX_NAME, pattern=KNOB_NAME)] = (
        Field(
            description="The knob: `optimizer.<attribute>`, `<callback>.<attribute>`"
            " or `user.<name>`.",
            examples=["early_stopping.patience"],
        )
    )
    value: Annotated[StrictBool | StrictInt | StrictFloat | None, AfterValidator(_finite)] = Field(
        description="The new value: a finite number, `true`/`false`, or `null` (e.g. no"
        " `baseline`); the callback rejects a type or range the knob does not take.",
        examples=[5],
    )

    def args(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}


COMMAND_TAG = "kind"
AnyCommand = (
    StopCommand | SetLrCommand | CheckpointCommand | PauseCommand | ResumeCommand | SetCommand
)
Command = Annotated[AnyCommand, Field(discriminator=COMMAND_TAG)]
"""The body of `POST /api/runs/{run_id}/commands`, told apart by `kind`."""


class RenameRun(_Body):
    """The body of `PATCH /api/runs/{run_id}`."""

    name: Annotated[
        str,
        StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=MAX_NAME),
        Storable,
    ] = Field(
        description=f"The new name: 1 to {MAX_NAME} characters once spaces around it are trimmed.",
        examples=["baseline-2"],
    )


# -- query parameters --------------------------------------------------------------

MAX_PAGE = 1000
"""Most runs one page of `GET /api/runs` holds."""
MAX_POINTS_LIMIT = 20_000
"""Most points per series a metrics route returns."""

NameFilter = Annotated[str, StringConstraints(max_length=MAX_Q), Storable]
ProjectName = Annotated[str, StringConstraints(max_length=MAX_NAME), Storable]


class _Filter(BaseModel):
    q: NameFilter | None = Field(
        None,
        description="Keep runs whose name matches: plain text (a case-insensitive substring),"
        " or a regular expression when it holds any of . ^ $ * + ? { } [ ] \\ | ( ).",
        examples=["lr-0.01", "^sweep-[0-9]+$"],
    )
    project: ProjectName | None = Field(None, description="Keep runs of this project.")
    status: list[Status] = Field(
        [], description="Keep runs with this status; repeat for several. All if none."
    )

    def run_filter(self) -> RunFilter:
        return RunFilter(q=self.q or None, project=self.project, status=tuple(self.status))


class RunsQuery(_Filter):
    """The query parameters of `GET /api/runs`."""

    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Runs per page.")
    cursor: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        None, description="The `next` of the page before; none for the first page."
    )
    sort: SortName = Field(
        "-started", description="Order: started, name, project, status, duration, epochs;"
        " `-` first for descending."
    )  # fmt: skip


class MetricsQuery(BaseModel):
    """The query parameters of `GET /api/metrics` (several runs at once)."""

    run_id: list[Annotated[str, StringConstraints(pattern=f"^{RUN_ID_PATTERN}$")]] = Field(
        min_length=1,
        max_length=MAX_COMPARE,
        description=f"A run's id; repeat for several (1 to {MAX_COMPARE}).",
    )
    scope: Scope = "epoch"
    key: list[Annotated[str, StringConstraints(max_length=MAX_NAME)]] = Field(
        [], description="A metric name; repeat for several. All if none."
    )
    max_points: int = Field(2000, ge=2, le=MAX_POINTS_LIMIT)
    start: int | None = Field(None, ge=0, le=MAX_INT)
    end: int | None = Field(None, ge=0, le=MAX_INT)


class BulkDelete(_Body, _Filter):
    """The body of `POST /api/runs/delete`: a filter as `GET /api/runs` takes it."""

    dry_run: bool = Field(
        False, strict=True, description="Only count what would be deleted; delete nothing."
    )

    def run_filter(self) -> RunFilter:
        if not (self.q or self.project is not None or self.status):
            raise BadRequest(
                "Name a filter (q, project or status) to delete runs by: an empty one"
                " would delete every run."
            )
        return super().run_filter()


class JsonBody(Generic[T]):
    """A dependency: the request body as strict JSON, validated as `T`.

    `openapi` is what the route's `openapi_extra` needs to show the body's schema.
    """

    def __init__(self, tp: Any, examples: dict[str, Any], *, tag: str | None = None) -> None:
        """`examples`: name → a valid body; the first is quoted to a body that is no object."""
        self.adapter: TypeAdapter[T] = TypeAdapter(tp)
        self.example = next(iter(examples.values()))
        self.tag = tag
        content = {
            "schema": _inline(self.adapter.json_schema()),
            "examples": {name: {"value": value} for name, value in examples.items()},
        }
        self.openapi: dict[str, Any] = {
            "requestBody": {"required": True, "content": {"application/json": content}}
        }

    async def __call__(self, request: Request) -> T:
        body = await request.body()
        try:
            payload = loads(body.decode("utf-8", errors="replace") or "null")
        except FrameError as exc:
            detail = str(exc).removeprefix("Frame is not valid JSON: ")
            raise BadRequest(f"The body is not valid JSON: {detail}.") from None
        try:
            return self.adapter.validate_python(payload)
        except ValidationError as exc:
            errors = [self._error(e) for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors, body=payload) from None

    def _error(self, error: Any) -> dict[str, Any]:
        """One pydantic error, its `loc` from "body", told in the words of the API."""
        kind, loc, msg, given = error["type"], tuple(error["loc"]), error["msg"], error["input"]
        if self.tag is not None and kind == "union_tag_invalid":
            kind, loc = "literal_error", (self.tag,)
            msg = f"Input should be {_either(error['ctx']['expected_tags'])}"
            given = given.get(self.tag) if isinstance(given, dict) else given
        elif self.tag is not None and kind == "union_tag_not_found":
            kind, loc, msg = "missing", (self.tag,), "Field required"
        elif self.tag is not None and loc:
            loc = loc[1:]  # the tag pydantic puts first: "set_lr.lr" is "lr"
        if kind in ("model_type", "model_attributes_type", "dict_type"):  # no class names
            msg = "Input should be a JSON object"
            if not loc:
                msg += f" such as {json.dumps(self.example)}"
        elif kind == "extra_forbidden":
            msg = "Unexpected field"
        return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": given}


def _either(tags: str) -> str:
    """The tags pydantic lists, "'a', 'b', 'c'", as "'a', 'b' or 'c'"."""
    head, _, last = tags.rpartition(", ")
    return f"{head} or {last}" if head else last


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` written in place, for an OpenAPI operation."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            # A mapping would name `$defs`; each member's `const` tells them apart.
            return {k: resolve(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


command_body: JsonBody[AnyCommand] = JsonBody(
    Command,
    {
        "stop": {"kind": "stop"},
        "set_lr": {"kind": "set_lr", "lr": 0.001},
        "stop_checkpoint": {"kind": "stop", "checkpoint": True},
        "checkpoint": {"kind": "checkpoint"},
        "pause": {"kind": "pause"},
        "resume": {"kind": "resume"},
        "set": {"kind": "set", "name": "early_stopping.patience", "value": 5},
    },
    tag=COMMAND_TAG,
)


def command_args(body: AnyCommand) -> dict[str, Any]:
    """What a command carries besides `kind` and `lr`, as stored in `commands.args`."""
    if isinstance(body, SetCommand):
        return body.args()
    if isinstance(body, StopCommand) and body.checkpoint:
        return {"checkpoint": True}
    return {}


rename_body: JsonBody[RenameRun] = JsonBody(RenameRun, {"rename": {"name": "baseline-2"}})
bulk_delete_body: JsonBody[BulkDelete] = JsonBody(
    BulkDelete,
    {
        "by_filter": {"q": "^sweep-", "status": ["failed"]},
        "count_only": {"project": "mnist", "dry_run": True},
    },
)


# -- errors ------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status, again.", examples=[404])
    message: str = Field(
        description="What went wrong, safe to show to a user.",
        examples=["No run with id '3f2a'."],
    )


class ErrorResponse(BaseModel):
    """Every error's body (docs/http_api.md, Conventions)."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": ErrorResponse,
        "description": "Bad value (400), missing or wrong token (401), unknown run (404),"
        " conflict (409), body too large (413): never 422.",
    }
}
"""The error responses of every route under /api, for the OpenAPI schema."""

MAX_SHOWN = 100
"""Longest rendering of a received value in an error message (characters)."""


def validation_error(errors: Sequence[Any]) -> tuple[int, str]:
    """The status and message for a request the models refused (the first error).

    A run id that is not 32 lowercase hex characters names no run: 404, as the
    lookup would answer, unless something else in the request is wrong too.
    """
    others = [e for e in errors if not _is_bad_run_id(e)]
    if errors and not others:
        return 404, f"No run with id {errors[0].get('input')!r}."
    if not others:
        return 400, "Bad request."
    error = others[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "request"
    msg = str(error.get("msg", "Invalid value")).removeprefix("Value error, ").rstrip(".")
    message = f"Bad value for {where}: {msg}. Received {_show(error.get('input'))}."
    # A field name or value may hold an unpaired surrogate: show it escaped.
    return 400, message.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_bad_run_id(error: Any) -> bool:
    return tuple(error.get("loc", ())) == ("path", "run_id")


def _show(value: Any) -> str:
    """`value` as JSON (non-finite numbers as NaN/Infinity), cut to `MAX_SHOWN`."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):  # a circular or too deep value
        text = "a value too deep to show"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
