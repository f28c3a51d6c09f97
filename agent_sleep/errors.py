"""The one exception tree of agent-sleep.

Expected outcomes (an adapter rejected by the gate, a run with nothing to
consolidate) are returned as data, never raised. Exceptions are for input
that cannot be processed and for parts of the system that are unavailable::

    AgentSleepError
    ├── ConfigError                 bad settings or arguments
    ├── InvalidInputError           a value that breaks a documented contract
    │   ├── InvalidEventError       malformed experience event / feedback
    │   ├── PayloadTooLargeError    text or payload above the configured cap
    │   └── EncodingError           text that is not valid UTF-8
    ├── NotFoundError               an id that does not exist (names the id)
    ├── StoreError                  the experience database
    │   ├── DatabaseUnavailableError   cannot connect (names the URL)
    │   ├── SchemaTooNewError          database migrated by a newer agent-sleep
    │   └── SchemaOutdatedError        database needs ``agent-sleep init``
    ├── ModelError                  base models
    │   ├── ModelNotFoundError      model not installed (names the fix)
    │   └── UnsupportedModelError   an architecture the generators cannot drive (also a TypeError)
    ├── AdapterError                LoRA adapter artifacts and stacks
    │   ├── AdapterFormatError      missing/half-written folder, bad config, pickle files
    │   ├── TamperedAdapterError    weights do not match the manifest's hash
    │   ├── IncompatibleAdapterError   other base model, unknown targets, wrong shapes
    │   └── AdapterExistsError      an immutable version would be overwritten
    ├── DeploymentError             registry deployments
    │   ├── DeployConflictError     another deploy won the race
    │   └── NothingToRollBackError  no earlier deployment to return to
    ├── EvaluationError             scoring a stack failed (the candidate is not deployed)
    ├── RunTakenOverError           a consolidation run's write by a process that no longer owns the run
    ├── ServingError                the OpenAI-compatible HTTP API
    │   ├── RequestError            a request rejected with 400 (names the field; also InvalidInputError)
    │   └── APIError                an HTTP error answered with an OpenAI-style body
    ├── PathExistsError             a file or folder would be overwritten (also a FileExistsError)
    └── MissingDependencyError      optional package missing (names the install)

A class listed under two parents in its definition (``AdapterFormatError`` is
also an ``InvalidInputError``) is drawn under the first; builtin bases such as
``ValueError`` keep ``except ValueError`` callers working.
"""

from __future__ import annotations


class AgentSleepError(Exception):
    """Base class of every error agent-sleep raises on purpose."""


class ConfigError(AgentSleepError):
    """Settings or arguments that cannot be used."""


class InvalidInputError(AgentSleepError, ValueError):
    """A value that breaks a documented contract."""


class InvalidEventError(InvalidInputError):
    """A malformed experience event, outcome or feedback record."""


class PayloadTooLargeError(InvalidInputError):
    """Text or a payload larger than the configured cap."""


class EncodingError(InvalidInputError):
    """Text that cannot be stored as UTF-8."""


class NotFoundError(AgentSleepError, LookupError):
    """An id that does not exist. The message names the id."""


class StoreError(AgentSleepError):
    """Problems with the experience database."""


class DatabaseUnavailableError(StoreError):
    """The database cannot be reached."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer agent-sleep than this one."""


class SchemaOutdatedError(StoreError):
    """The database has no or an older schema; run ``agent-sleep init``."""


class ModelError(AgentSleepError):
    """Problems loading or running a base model."""


class ModelNotFoundError(ModelError):
    """A base model that is not installed; the message names the fix."""


class UnsupportedModelError(ModelError, TypeError):
    """A model whose architecture this code cannot drive (e.g. no ``.model.layers``)."""


class AdapterError(AgentSleepError):
    """Problems with a LoRA adapter artifact or a stack of them."""


class AdapterFormatError(AdapterError, InvalidInputError):
    """A missing, half-written or malformed adapter folder."""


class TamperedAdapterError(AdapterError):
    """Adapter weights whose hash does not match the manifest."""


class IncompatibleAdapterError(AdapterError, InvalidInputError):
    """An adapter for another base model, or with targets/shapes the model lacks."""


class AdapterExistsError(AdapterError):
    """Writing would overwrite an immutable adapter version."""


class DeploymentError(AgentSleepError):
    """Problems changing what is live for an agent."""


class DeployConflictError(DeploymentError):
    """Another deployment for the same agent won a race."""


class NothingToRollBackError(DeploymentError):
    """There is no earlier deployment to roll back to."""


class EvaluationError(AgentSleepError):
    """Evaluating a stack failed (lm-eval raised, or returned fewer or other items than asked).

    The cause is chained; a consolidation run treats it as "not deployed", never as a pass.
    """


class RunTakenOverError(AgentSleepError):
    """A write to a consolidation run's records by a process that no longer owns the run; nothing was written.

    Another process took the run over (or it was declared orphaned, or it has ended) while this one was still
    working on it. ``owner`` is who owns the run now (None: nobody yet), ``stage`` what the write was for (a
    stage, or ``"finish"``). The message names the run, the stage and the owner.
    """

    def __init__(self, message: str, *, run_id: str, stage: str, owner: str | None) -> None:
        super().__init__(message)
        self.run_id, self.stage, self.owner = run_id, stage, owner


class ServingError(AgentSleepError):
    """Problems answering a request of the OpenAI-compatible HTTP API."""


class RequestError(ServingError, InvalidInputError):
    """A request the API rejects with 400; ``param`` names the offending field (``messages[2].role``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class APIError(ServingError):
    """An error answered with an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class PathExistsError(AgentSleepError, FileExistsError):
    """Writing would overwrite a file or folder that must not be replaced."""


class MissingDependencyError(AgentSleepError, ImportError):
    """An optional dependency is not installed; the message names the install."""
