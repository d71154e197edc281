"""Errors raised by the data package."""

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad or inconsistent input data.

    The message always names the problem (file and line where there is one) and how to fix it.
    """
