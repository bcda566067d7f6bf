"""A reference Core: the gRPC service the worker reports results to, backed by SQLite.

It stands in for the real Core in tests and demos, and shows what Core must do with
at-least-once delivery: accept a result for a job it already has without storing it twice.
"""
