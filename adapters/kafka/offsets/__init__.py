"""The Kafka source's offset bookkeeping, without Kafka: what each assigned partition
has taken, finished and committed, when to commit, and the finished offsets a commit's
metadata carries.

Pure on purpose (an import-linter contract keeps kafka, gevent and grpc out): every rule
that decides what is taken, skipped, paused or committed is unit-tested without a
broker, and a second Kafka client would reuse it as it is. The source holds one lock
around every call; nothing here is thread-safe.
"""
