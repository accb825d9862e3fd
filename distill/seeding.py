"""One seed per tuple of values, the same in every process and every Python version: what every random draw of
distill (distillation steps, shapes-world scenes and parts) is seeded from, so a resumed run draws exactly what the
uninterrupted one would have. (Python's hash() of a str changes per process, and hash(tuple) is not promised stable
across versions.)"""

import hashlib


def stable_seed(*parts) -> int:
    """A 63-bit seed: the first 8 bytes of sha256(repr(parts)), little-endian, shifted right by one."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1
