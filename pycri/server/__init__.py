"""gRPC servicers: thin CRI handlers that validate, look up and delegate."""
