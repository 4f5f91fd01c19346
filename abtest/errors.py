"""The exception tree of abtest. Only `abtest.cli` prints errors or exits.

    AbtestError                 base; `exit_code` maps to docs/cli.md's table
    ├── ConfigError             bad flags, arms, prompt files, evidence paths (exit 2)
    ├── MissingError            a server binary or model file that is not there (exit 3)
    │   ├── BinaryNotFound
    │   └── ModelNotFound
    ├── ProvisionError          building llama-server failed (exit 3)
    ├── LaunchError             a server exited or never became healthy (exit 4)
    ├── EvidenceError           evidence unreadable or unwritable (exit 2)
    ├── RegressionFound         the nightly gate found a regression (exit 1)
    └── MissingNight            the nightly gate has no evidence for tonight, or for a (model, arm)
                                of the trailing nights (exit 5)

Messages name the thing (arm, port, file), the likely cause and the next step. A failed request
is not an exception: it is a `RequestRecord` with its `error`, and the run goes on.
"""

from __future__ import annotations

# One table of exit codes, shared by every command (documented in docs/cli.md).
EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_PARTIAL = 4
EXIT_MISSING_NIGHT = 5  # the gate: tonight, or a (model, arm) of the trailing nights, has no evidence
EXIT_INTERNAL = 70  # an exception nothing else caught: a bug, or an OS failure (EX_SOFTWARE)
EXIT_BUSY = 75  # scripts/nightly.sh only: another nightly holds the lock (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130


class AbtestError(Exception):
    """Base of every error abtest raises on purpose."""

    exit_code = EXIT_USAGE


class ConfigError(AbtestError):
    exit_code = EXIT_USAGE


class MissingError(AbtestError):
    exit_code = EXIT_MISSING


class BinaryNotFound(MissingError):
    pass


class ModelNotFound(MissingError):
    pass


class ProvisionError(AbtestError):
    exit_code = EXIT_MISSING


class LaunchError(AbtestError):
    exit_code = EXIT_PARTIAL


class EvidenceError(AbtestError):
    exit_code = EXIT_USAGE


class RegressionFound(AbtestError):
    exit_code = EXIT_REGRESSION


class MissingNight(AbtestError):
    exit_code = EXIT_MISSING_NIGHT
