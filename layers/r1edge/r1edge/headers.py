"""HTTP header names r1edge reads or writes, one constant each (lower case, as ASGI carries them)."""
