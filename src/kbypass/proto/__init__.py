"""Sans-IO protocol modules: bytes and time in, bytes and events out; no sockets, no clocks read."""
