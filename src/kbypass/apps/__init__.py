"""Applications over a Port: sink, reflector, generators, ping-pong. Each is a small class with a `run`
loop that moves batches; the CLI tools in kbypass.tools wrap them."""
