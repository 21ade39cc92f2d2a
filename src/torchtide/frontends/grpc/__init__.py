"""Triton's gRPC protocol (`inference.GRPCInferenceService`) plus grpc.health.v1."""

from torchtide.frontends.grpc.frontend import GrpcFrontend

__all__ = ["GrpcFrontend"]
