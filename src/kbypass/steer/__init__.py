"""Flow steering: rules (what to take from the wire) and the XDP program that applies them.

`Rule` is a pure value (no kernel needed); `Steering` loads bpf/steer.bpf.c, attaches it to one interface
through a bpf_link and keeps its rule maps in step with the rules you add and remove.
"""

from kbypass.steer.rules import Rule, RuleError
from kbypass.steer.steering import Steering

__all__ = ["Rule", "RuleError", "Steering"]
