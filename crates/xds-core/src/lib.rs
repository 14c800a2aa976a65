//! Snapshot cache and gRPC xDS server.
