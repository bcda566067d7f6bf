"""gRPC adapters: the result sink that reports to Core, and gRPC's gevent set-up.

Import the submodules (``adapters.grpc.sink``, ``adapters.grpc.runtime``): this package
re-exports nothing, so importing ``adapters.grpc.runtime`` before gevent is patched does
not drag in more than it needs.
"""
