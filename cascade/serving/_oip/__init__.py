"""The Open Inference Protocol's gRPC messages and service stubs, generated from
``grpc_service.proto`` (see ``generate.py``). Importing the stubs needs ``grpcio``."""
