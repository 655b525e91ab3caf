"""r1edge: the shared library of the r1edge functions (router, edge, config, worker, health).

Domain logic lives here and is pure where it can be (no I/O, no clock, no unseeded randomness);
I/O sits behind small interfaces (:mod:`r1edge.upstream`, :mod:`r1edge.runtime`). The functions
in ``functions/*/app.py`` stay thin and call into this package.
"""

__version__ = "0.1.0"
