"""gRPC at the edge: `server` (calls ↔ model values), `listeners` (the ports), `grpc_errors` (the
one place a domain error becomes a gRPC status), `health`, `reflection`, `tls` (listener
certificates, reloaded) and `open_streams` (streams per principal, bounded).
"""
