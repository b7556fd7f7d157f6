"""Sieve mail filtering (RFC 5228 and extensions): parser, validator and interpreter."""

from provider.sieve.interpreter import (
    EXTENSIONS,
    Action,
    Budget,
    BudgetExceeded,
    Envelope,
    Result,
    Script,
    SieveRuntimeError,
    compile_script,
    evaluate,
    run,
)
from provider.sieve.parser import SieveError, SieveParseError, parse

__all__ = [
    "EXTENSIONS",
    "Action",
    "Budget",
    "BudgetExceeded",
    "Envelope",
    "Result",
    "Script",
    "SieveError",
    "SieveParseError",
    "SieveRuntimeError",
    "compile_script",
    "evaluate",
    "parse",
    "run",
]
