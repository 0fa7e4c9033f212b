"""Fuzzing of every edge that takes untrusted input (issue 8): frames, JSON, store, SQL."""
