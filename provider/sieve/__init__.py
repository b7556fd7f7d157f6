"""Sieve mail filtering (RFC 5228 and extensions): parser, validator and interpreter."""

from provider.sieve.interpreter import (
    EXTENSIONS,
    Action,
    Budget,
    BudgetExceeded,
    Context,
    Envelope,
    Loader,
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
    "Context",
    "Envelope",
    "Loader",
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
