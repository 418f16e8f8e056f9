"""The CRI runtime.v1 wire contract: stubs generated from proto/api.proto.

The generated modules (api_pb2, api_pb2_grpc) are not committed; `make proto` (python -m pycri.api.generate)
writes them before the package is used.
"""
