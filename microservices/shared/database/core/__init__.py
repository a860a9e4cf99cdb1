"""Leaf modules every layer may use: errors, identifier validation, secret storage, tracing.

Nothing here imports from the rest of the package (enforced by import-linter, see
docs/architecture.md).
"""
