"""Fault-injection and abuse tests: SPEC §3 holds when things go wrong."""
