"""Scheduled jobs: small functions that push an app context and call one service each."""
