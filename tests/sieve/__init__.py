"""Tests of the Sieve interpreter, checked against Pigeonhole's sieve-test."""
