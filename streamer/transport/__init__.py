"""What travels between the stages: the message types and their codec, ZeroMQ sockets and endpoints,
CurveZMQ keys, and the shared-memory frame store that same-host stages pass frames through."""
