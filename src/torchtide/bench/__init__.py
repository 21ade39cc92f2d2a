"""`torchtide bench`: a light load generator for KServe V2 servers (HTTP and gRPC)."""
