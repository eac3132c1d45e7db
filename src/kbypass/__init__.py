"""kbypass: kernel-bypass networking from Python.

Steer chosen flows to userspace rings (AF_XDP + an XDP steering program); everything else stays with the
kernel. See README.md and ../shared/design.md for the shape of the package.
"""

import os as _os

# kbypass never multiplies matrices; numpy's BLAS thread pool would only spin on the cores that the
# generator and the system under test are pinned to. Set before numpy is first imported.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("OMP_NUM_THREADS", "1")

__version__ = "0.1.0"
