"""The one version number of all three convocate packages."""

__version__ = "0.1.0"

#: Protocol revision advertised by ``ping`` (DESIGN §3). Bumped when an
#: extension changes the wire format in a way a client must know about.
PROTOCOL_VERSION = 2
