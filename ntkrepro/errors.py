"""The errors a run reports as bad input: raised before any compute, never a result."""


class ParameterError(ValueError):
    """A notebook parameter is unknown, of the wrong type or out of range."""


class MemoryBudgetError(ParameterError):
    """A computation would need more memory than the machine has (estimated beforehand)."""
