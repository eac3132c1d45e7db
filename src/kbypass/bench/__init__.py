"""The benchmark machinery behind `kbypass bench` and bench/: one receive path, generator or ping-pong measured beside its anchors."""
