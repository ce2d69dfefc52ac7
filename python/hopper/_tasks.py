"""Task registry, the context a handler gets, and running one handler."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import re
import sys
import threading
import traceback
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from hopper._options import parse_duration
from hopper._records import Job

if TYPE_CHECKING:
    import pydantic

logger = logging.getLogger("hopper.worker")

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Task:
    name: str
    handler: Handler
    timeout: timedelta | None = None
    # turns the stored payload into what the handler's annotation asks for
    payload_validator: Callable[[Any], Any] | None = None
    takes_context: bool = True
    is_async: bool = False


class TaskRegistry:
    """Maps task identifiers to handlers: ``@tasks.task("send_email")``."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}

    def task(
        self, name: str, *, timeout: float | timedelta | str | None = None
    ) -> Callable[[Handler], Handler]:
        if not isinstance(name, str):  # @tasks.task without its parentheses
            raise TypeError(
                f'tasks.task takes the task identifier: @tasks.task("send_email") (got {name!r})'
            )
        if not name or not name.strip():
            raise ValueError("task name must not be blank")

        def register(handler: Handler) -> Handler:
            if name in self.tasks:
                raise ValueError(f"task {name!r} is already registered")
            function = _function_of(handler)
            if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
                # its call would return a generator that nothing iterates
                raise TypeError(f"handler {_name(handler)} is a generator: return, not yield")
            self.tasks[name] = Task(
                name=name,
                handler=handler,
                timeout=parse_duration(timeout, "timeout") if timeout is not None else None,
                payload_validator=_payload_validator(handler),
                takes_context=_takes_context(handler),
                is_async=_is_async(handler),
            )
            return handler

        return register

    def __contains__(self, name: str) -> bool:
        return name in self.tasks

    def names(self) -> list[str]:
        return sorted(self.tasks)


def _payload_validator(handler: Handler) -> Callable[[Any], Any] | None:
    """The validation of the payload parameter's annotation: a pydantic model's
    model_validate; for an annotation that holds models (``list[Item]``,
    ``Item | None``) a TypeAdapter's; None for one that holds none (``dict``)."""
    parameters = list(inspect.signature(handler).parameters)
    if not parameters:
        raise TypeError(f"handler {_name(handler)} must take the payload as first parameter")
    annotation = _evaluated_annotation(handler, parameters[0])
    imported = _imported_pydantic()
    if imported is None or not _holds_model(annotation, imported.BaseModel):
        return None
    if inspect.isclass(annotation):
        return typing.cast("type[pydantic.BaseModel]", annotation).model_validate
    return typing.cast("Callable[[Any], Any]", imported.TypeAdapter(annotation).validate_python)


def _holds_model(annotation: Any, model: type) -> bool:
    if inspect.isclass(annotation) and not typing.get_args(annotation):
        return issubclass(annotation, model)
    return any(_holds_model(argument, model) for argument in typing.get_args(annotation))


def _takes_context(handler: Handler) -> bool:
    """Whether the handler is called with (payload, job) rather than (payload): it
    is when it has a second parameter. A handler that neither call fits (a third
    required parameter, a required keyword-only one) would fail every attempt."""
    signature = inspect.signature(handler)
    takes_context = len(signature.parameters) >= 2
    try:
        signature.bind(*([None, None] if takes_context else [None]))
    except TypeError as error:
        raise TypeError(
            f"handler {_name(handler)} must take (payload) or (payload, job), with any"
            f" other parameter optional; it takes {signature} ({error})"
        ) from None
    return takes_context


def _name(handler: Handler) -> str:
    return getattr(handler, "__name__", type(handler).__name__)


def _is_async(handler: Handler) -> bool:
    # Python 3.11 does not look into an object's __call__
    return inspect.iscoroutinefunction(handler) or (
        not inspect.isroutine(handler) and inspect.iscoroutinefunction(type(handler).__call__)
    )


def _function_of(handler: Handler) -> Any:
    """The handler under its decorators, or a partial's function."""
    function = inspect.unwrap(handler)
    return function.func if isinstance(function, functools.partial) else function


def _evaluated_annotation(handler: Handler, name: str) -> Any:
    """The annotation of the handler's parameter name, evaluated as
    typing.get_type_hints does. Only that one: the others may name what a module
    imports for type checkers alone (a JobContext under TYPE_CHECKING), which
    cannot be evaluated at runtime."""
    function = _function_of(handler)
    if not inspect.isroutine(function):
        function = type(function).__call__  # an instance of a class with __call__
    annotations = getattr(function, "__annotations__", None) or {}
    if name not in annotations:
        return None
    # get_type_hints reads any object's __annotations__ with its __globals__
    one = types.SimpleNamespace(
        __annotations__={name: annotations[name]}, __globals__=getattr(function, "__globals__", {})
    )
    try:
        return typing.get_type_hints(one)[name]
    except NameError as error:
        raise TypeError(
            f"handler {_name(handler)}: the annotation of its payload parameter"
            f" ({annotations[name]!r}) cannot be evaluated ({error}); hopper reads it to"
            " find a pydantic model to validate the payload with"
        ) from error


def _imported_pydantic() -> Any:
    """pydantic when something imported it, else None: only then can a model
    class or instance exist, so hopper never imports it (19 ms of a worker's
    start-up, over a tenth)."""
    return sys.modules.get("pydantic")


@dataclass
class JobContext:
    """What a handler gets besides its payload."""

    job: Job
    worker_id: str
    completed_in_transaction: bool = False
    _report_progress: Callable[[int], None] = lambda _: None
    _transactions: Callable[[JobContext, Any], Any] | None = None
    _cancelled: threading.Event | None = None
    _logger: logging.LoggerAdapter | None = None
    # a sync handler's open job transaction, which _abandon cancels the query of
    _open_connection: Any = None
    _connection_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def logger(self) -> logging.LoggerAdapter:
        """Logs with the job id, task and attempt (created on first use)."""
        if self._logger is None:
            self._logger = job_logger(self.job)
        return self._logger

    @property
    def cancelled(self) -> threading.Event:
        """Set when the job is cancelled, times out or the worker stops; a sync handler
        can poll it. Created on first use: most jobs never look."""
        if self._cancelled is None:
            self._cancelled = threading.Event()
        return self._cancelled

    def _abandon(self) -> None:
        """The worker gives up on the handler: it timed out or was cancelled, or the
        worker stops or lost the job. Sets ``cancelled``, and cancels the query that a
        sync handler's job transaction runs: the thread cannot be stopped, and one
        waiting for a lock would hold its pooled connection for as long. (An async
        handler's query is cancelled with its task.)"""
        self.cancelled.set()
        if self._open_connection is not None:  # the thread looks again, under the lock
            threading.Thread(target=self._cancel_open_query, daemon=True).start()

    def _cancel_open_query(self) -> None:
        # under the lock, so that the connection cannot go back to the pool, and the
        # cancel reach the next job's query, meanwhile
        with self._connection_lock:
            if self._open_connection is not None:
                with contextlib.suppress(Exception):
                    self._open_connection.cancel_safe(timeout=5)

    def set_progress(self, percent: float) -> None:
        """Record how far the job is, 0-100 (a fraction rounded to the nearest whole
        percent, as the column holds); sent without blocking the handler."""
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise TypeError(f"progress must be a number (got {percent!r})")
        if not 0 <= percent <= 100:  # NaN too
            raise ValueError(f"progress must be between 0 and 100 (got {percent})")
        self._report_progress(round(percent))

    def transaction(self, result: Any = None) -> Any:
        """A connection in a transaction that also completes this job (with ``result``)
        when it commits: ``async with job.transaction() as conn`` in an async handler,
        ``with job.transaction() as conn`` in a sync one. The handler's writes and the
        completion commit together, or not at all (raises JobLost when another worker
        took the job meanwhile)."""
        if self._transactions is None:
            raise RuntimeError("job.transaction() needs a worker started with a DSN")
        return self._transactions(self, result)


class JobLost(Exception):
    """The job is no longer held by this worker (rescued, cancelled or unlocked),
    so the transaction that would have completed it was rolled back."""


class JobLogger(logging.LoggerAdapter):
    """Prefixes every message with the job id, task and attempt, and passes them
    as ``extra`` fields (job_id, task, attempt) for structured handlers."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        prefix = f"job {extra['job_id']} ({extra['task']}, attempt {extra['attempt']})"
        return f"{prefix}: {msg}", kwargs


def job_logger(job: Job) -> logging.LoggerAdapter:
    return JobLogger(
        logger,
        {"job_id": job.id, "task": job.task_identifier, "attempt": job.attempts},
    )


# --- outcomes -------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    job_id: int
    result_json: str | None  # serialised here, so a bad result fails the job, not the batch


@dataclass(frozen=True)
class Failed:
    job_id: int
    message: str
    replacement_payload: Any = None
    permanent: bool = False
    trace: str = field(default="", compare=False)  # for the log, never stored


@dataclass(frozen=True)
class Settled:
    """The handler completed the job itself, in its own transaction."""

    job_id: int


# what the worker reports about one job (not hopper.Outcome, add_job's result)
Report = Completed | Failed | Settled


class PermanentFailure(Exception):
    """Raise from a handler to fail the job without further attempts."""


def _validation_message(error: pydantic.ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in e['loc']) or 'payload'}: {e['msg']}"
        for e in error.errors()
    ]
    return "payload is invalid: " + "; ".join(problems)


def run_in_daemon_thread(call: Callable[[], Any]) -> asyncio.Future[Any]:
    """Runs a sync handler in its own daemon thread. A thread cannot be killed: one
    that outlives its timeout or a shutdown runs on unobserved, and being a daemon
    it never holds the process at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = call(), None
        except BaseException as raised:
            result, error = None, raised
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, daemon=True, name="hopper-task").start()
    return future


async def run_handler(task: Task, job: Job, context: JobContext) -> Report:
    """Runs one handler with its timeout and turns what happened into an outcome."""
    payload: Any = job.payload
    if task.payload_validator is not None:
        try:
            payload = task.payload_validator(payload)
        except _imported_pydantic().ValidationError as error:
            return Failed(job.id, _validation_message(error), permanent=True)
    arguments = (payload, context) if task.takes_context else (payload,)
    timeout = job.timeout or task.timeout
    # no context manager without a timeout: asyncio.timeout(None) costs 1.6 us a
    # job, a tenth of what the worker spends on a no-op job
    deadline = None if timeout is None else asyncio.timeout(timeout.total_seconds())
    try:
        if task.is_async:
            call = task.handler(*arguments)
        else:
            call = run_in_daemon_thread(lambda: task.handler(*arguments))
        if deadline is None:
            result = await call
        else:
            async with deadline:
                result = await call
    except TimeoutError as error:
        if timeout is None or deadline is None or not deadline.expired():
            return _failure(job, error)  # the handler's own, an HTTP call's say
        context._abandon()
        return Failed(job.id, f"timeout after {interval_text(timeout)}")
    except PermanentFailure as error:
        return _failure(job, error, permanent=True)
    except (Exception, SystemExit, KeyboardInterrupt) as error:
        # a handler's sys.exit() (or a library's: argparse's parser.error, say) ended
        # the worker, and the job, given back uncounted, ended the next one too
        return _failure(job, error)
    if context.completed_in_transaction:
        return Settled(job.id)
    return _outcome_of_result(job, result)


def _failure(job: Job, error: BaseException, permanent: bool = False) -> Failed:
    return Failed(job.id, _error_text(error), permanent=permanent, trace=_traceback_text(error))


def log_failure(context: JobContext, outcome: Failed) -> None:
    """Logs a failed job with its traceback: a warning while attempts remain, an error
    when the job fails for good."""
    job = context.job
    if outcome.permanent:
        level, what = logging.ERROR, "job failed for good (no retry)"
    elif job.attempts >= job.max_attempts:
        level, what = (
            logging.ERROR,
            f"job failed for good (attempt {job.attempts} of {job.max_attempts})",
        )
    else:
        level, what = logging.WARNING, "job failed"
    trace = f"\n{outcome.trace.rstrip()}" if outcome.trace else ""
    context.logger.log(level, "%s: %s%s", what, outcome.message, trace)


def interval_text(duration: timedelta) -> str:
    """A duration as PostgreSQL prints an interval: 00:00:01.5, 1 day 02:00:00."""
    days, rest = divmod(duration.total_seconds(), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{int(hours):02}:{int(minutes):02}:{int(seconds):02}"
    if seconds % 1:
        clock += f"{seconds % 1:.6f}".rstrip("0")[1:]
    if days:
        return f"{int(days)} day{'s' if days != 1 else ''} {clock}"
    return clock


# The most of an error's text that is logged and stored (per attempt, in errors):
# an exception that carries a whole response body would otherwise fill both.
MAX_ERROR_CHARS = 10_000


def _error_text(error: BaseException) -> str:
    text = str(error)
    return _cut(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def _cut(text: str) -> str:
    if len(text) > MAX_ERROR_CHARS:
        cut = len(text) - MAX_ERROR_CHARS
        text = f"{text[:MAX_ERROR_CHARS]}... ({cut:,} more characters not kept)"
    return text


def _traceback_text(error: BaseException) -> str:
    """The traceback Python would print, chained exceptions included, without the
    frames of this module that called the handler, and each of its pieces (a frame,
    an exception's message) cut as the stored message is. Nothing for an exception
    never raised (a batch handler's returned one): the message says it all."""
    if error.__traceback__ is None:
        return ""
    report = traceback.TracebackException.from_exception(error)
    chained: traceback.TracebackException | None = report
    while chained is not None:
        frames = [f for f in chained.stack if f.filename != __file__]
        chained.stack = traceback.StackSummary.from_list(frames)
        chained = chained.__cause__ or (
            None if chained.__suppress_context__ else chained.__context__
        )
    return "".join(_cut(piece) for piece in report.format())


# \u0000 as json.dumps writes the character U+0000: not after an escaped backslash
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _outcome_of_result(job: Job, result: Any) -> Report:
    if (
        isinstance(job.payload, list)
        and isinstance(result, list)
        and len(result) == len(job.payload)
        and any(isinstance(r, BaseException) for r in result)
    ):
        return _batch_outcome(job, result)
    if result is None:
        return Completed(job.id, None)
    try:
        imported = _imported_pydantic()
        if imported and isinstance(result, imported.BaseModel):
            result = result.model_dump(mode="json")
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as error:  # PydanticSerializationError is a ValueError
        return Failed(job.id, f"result is not JSON serialisable: {error}", permanent=True)
    # the substring first: the pattern alone took 25 us on a 1 kB result, 2.4 ms on 100 kB
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        message = "result is not storable: jsonb cannot hold the character U+0000"
        return Failed(job.id, message, permanent=True)
    return Completed(job.id, text)


def _batch_outcome(job: Job, results: list[Any]) -> Failed:
    """A batch job whose elements partly failed is retried with the failed ones only."""
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    first = results[failed[0]]
    message = f"{len(failed)} of {len(results)} elements failed; first: {_error_text(first)}"
    replacement = [job.payload[i] for i in failed]
    return Failed(job.id, message, replacement_payload=replacement, trace=_traceback_text(first))
