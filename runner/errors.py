"""Errors the CLI turns into one-line messages and exit codes."""


class RunnerError(Exception):
    """Base class: a failure the user can act on, shown as one line."""

    exit_code = 1


class ConfigError(RunnerError):
    """The config or an input named by it is wrong; detected before any model loads."""

    exit_code = 2


class InputError(RunnerError):
    """The input dataset is missing, unreadable, or lacks a configured column."""

    exit_code = 2


class OutputError(RunnerError):
    """The output location cannot be used safely."""

    exit_code = 2


class JobFailed(RunnerError):
    """The job ran but did not meet its success criteria (e.g. too many error rows)."""

    exit_code = 1


class ReplicaFailed(JobFailed):
    """A replica kept dying (crash, OOM kill, lost node) after its restarts were used up."""


def first_line(err: BaseException, default: str = "") -> str:
    """The first line of an exception's message, `default` when it has none: every error we report is
    one line, whatever a library raised."""
    text = str(err).strip()
    return text.splitlines()[0] if text else default


def root_cause(err: BaseException | None) -> RunnerError | None:
    """The RunnerError behind Ray's wrappers (RayTaskError keeps it as .cause / __cause__), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RunnerError):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None
