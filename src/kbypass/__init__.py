"""kbypass: kernel-bypass networking from Python.

Steer chosen flows to userspace rings (AF_XDP + an XDP steering program); everything else stays with the
kernel. See README.md and ../shared/design.md for the shape of the package.
"""

__version__ = "0.1.0"
