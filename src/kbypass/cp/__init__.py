"""The control plane: one process per network namespace owns the steering program of each interface
kbypass steers there, so several kbypass programs (tools, the Python API) share one NIC.

    protocol  the request protocol, sans-IO (versioned JSON datagrams + SCM_RIGHTS)
    state     clients, their rules and sockets, conflicts; one kbypass.steer.Steering per interface
    server    `kbypass cp serve`: the unix-socket loop, permissions, logging
    client    ControlPlaneClient: connect (starting a control plane on demand) and ask
    paths     /run/kbypass/cp-NAME.{sock,lock,log}, NAME from the namespace
"""
