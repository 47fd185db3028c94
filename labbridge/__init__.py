"""labbridge: lab instrument middleware.

Analyzers speak ASTM (E1381/E1394) or HL7 v2 over serial or TCP; labbridge stores every result durably
before acknowledging it and relays it to the LIS. See docs/architecture.md.
"""

from labbridge import _build

__version__ = "0.1.0"

#: Which build of the protocol cores runs (compiled by mypyc, or the pure-Python sources): labbridge._build.
BUILD = _build.choose()
