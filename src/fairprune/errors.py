"""Errors a user can fix; stages print them as one line and exit non-zero."""
from __future__ import annotations


class FairpruneError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class ParamsError(FairpruneError, ValueError):
    """A params.yaml value is wrong: names the dotted key, the bad value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"params key '{key}' = {value!r} is invalid; allowed: {allowed}")


class DataError(FairpruneError):
    """The dataset on disk does not match what params ask for."""


class TrainingDiverged(FairpruneError):
    """The loss became NaN or infinite."""


class TrainingCollapsed(FairpruneError):
    """The model stopped predicting a class it should (a fairness term pushed every sample one way)."""
