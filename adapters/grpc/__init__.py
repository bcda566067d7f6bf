"""gRPC adapters: the result sink that reports to Core, and gRPC's gevent set-up.

Import the submodules (``sink``, ``runtime``): this package re-exports nothing, so
importing ``runtime`` before gevent is patched does not drag in more than it needs.
"""
