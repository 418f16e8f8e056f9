"""What the daemon serves: the gRPC method table (rpc.py), the two CRI services (runtime_service.py,
image_service.py), container events (events.py), and the HTTP/1.1 request reading both of its HTTP servers share
(http.py)."""
