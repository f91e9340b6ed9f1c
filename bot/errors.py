"""The one error root of sdbot and its two branches.

::

    SdbotError
    ├── UserInputError          safe to show in chat as it is; says what to fix
    │   ├── ParseError          the command text or options do not parse (the grammar's own
    │   │                       `commands.GrammarError` is answered the same way)
    │   ├── ImageInputError     an attachment is not an acceptable image (SPEC §3.1)
    │   ├── RefusedError        well-formed but not allowed (permissions, unknown job, …)
    │   └── InvalidRecordError  a job's stored options or parameters no longer read (a choice
    │       │                   a newer release dropped): says which, and to start it again
    │       └── UnreadableJobError  a stored job's row does not read at all (that job fails
    │                           alone; the others resume)
    └── OperationalError        something outside the user's control failed; logged in full,
        │                       shown to the user as one short line with the job id
        ├── BackendError        the backend answered with an error or not at all
        │   ├── BackendUnavailableError   network failure, 5xx, timeout, throttling (retryable)
        │   └── JobFailedError  the backend ran the job and it failed
        ├── ResultsExpiredError stored result URLs expired; refresh them and try again
        ├── ChatDeliveryError   the chat platform refused or failed a post
        │   └── ConversationClosedError  the bot may not post where the job lives (not a
        │                       member, channel gone): the job ends with this message
        └── ConfigError         bad configuration, found at start-up
"""

from __future__ import annotations


class SdbotError(Exception):
    """Root of every error sdbot raises on purpose."""


class UserInputError(SdbotError):
    """An error whose message is fit to show in chat and tells the user what to fix.

    `reason` names the kind of refusal with a word from a small fixed set, for operators'
    metrics (never the message: it may quote the user's text).
    """

    reason = "bad input"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ParseError(UserInputError):
    """The command text or its options do not parse."""

    reason = "parse"


class ImageInputError(UserInputError):
    """An attachment is not an image the bot accepts (SPEC §3.1)."""

    reason = "image"


class RefusedError(UserInputError):
    """The request is well-formed but not allowed or refers to something that does not exist."""

    reason = "refused"


class InvalidRecordError(UserInputError):
    """A stored job's options or parameters do not read as this version's types (`bot.records`).

    The message names the field and its value, so the job fails with a reason users can act on
    (start it again) instead of an unexpected error."""

    reason = "stored"


class UnreadableJobError(InvalidRecordError):
    """A stored job's row does not read as a `Job` (`bot.store.rows`): its records, or a
    column damaged below them. The store fails that job alone (`JobLeases.claim_jobs`)."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class OperationalError(SdbotError):
    """A failure outside the user's control.

    The full message is logged; users see `short` with the job id.
    """

    short = "something went wrong on our side"


class BackendError(OperationalError):
    """The backend answered with an error, or its answer could not be used."""

    short = "the backend refused the job"

    def __init__(self, message: str, *, status: int | None = None, user_message: str | None = None):
        super().__init__(message)
        self.status = status
        # A message written for the user (e.g. "model not found: x.safetensors"); None = generic.
        self.user_message = user_message


class BackendUnavailableError(BackendError):
    """The backend could not be reached, timed out, throttled or answered 5xx; worth retrying."""

    short = "the backend is not reachable right now"


class JobFailedError(BackendError):
    """The backend ran the job and reports it failed."""

    short = "the job failed on the backend"


class ResultsExpiredError(OperationalError):
    """Result URLs have expired; the caller should refresh them and try again."""


class ChatDeliveryError(OperationalError):
    """The chat platform refused or failed a post."""

    short = "the chat platform did not accept the message"


class ConversationClosedError(ChatDeliveryError):
    """The platform will not let the bot post in the job's conversation (the bot is not a
    member, the channel is archived or gone). Retrying cannot help: the job ends with this
    message (fit for users) and nothing more is posted there; the adapter has told the user
    privately where the platform allows."""

    short = "the bot cannot post in this conversation"


class StorageError(OperationalError):
    """The job database cannot be written: the disk is full or failing."""

    short = "the bot cannot store new jobs right now (its disk is full or failing)"


class StorageLostError(StorageError):
    """The job database's file was deleted or replaced under the running bot."""

    short = "the bot's data folder was deleted or replaced; an operator must restart it"


class ConfigError(OperationalError):
    """The configuration is invalid; the message names the setting."""
