"""Errors a user can act on. Each message names the fix."""


class VptError(Exception):
    """Base class for vpt errors that carry a user-facing fix."""


class WeightsUnavailableError(VptError, RuntimeError):
    pass


class PromptFileError(VptError, ValueError):
    pass


class ConfigError(VptError, ValueError):
    pass


class UnknownNameError(ConfigError, KeyError):  # a bad option name: a config error, and a KeyError
    def __init__(self, kind: str, name: str, valid, hint: str | None = None):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(self.valid)}" + (f"; {hint}" if hint else ""))

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]
