"""
owncdn.paths.normalize_path: the quick check of the common case agrees
with the full checks on every path.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from owncdn.errors import InvalidPath
from owncdn.paths import MAX_PATH_BYTES, normalize_path


def reference(raw: str) -> str | None:
    """
    What the rules say, written plainly: the path without its leading
    C{/}, or None when it is refused.
    """
    path = raw[1:] if raw.startswith("/") else raw
    if not path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return None
    try:
        if len(path.encode("utf-8")) > MAX_PATH_BYTES:
            return None
    except UnicodeEncodeError:
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return path


def outcome(raw: str) -> str | None:
    try:
        return normalize_path(raw)
    except InvalidPath:
        return None


class NormalizePathTests(SynchronousTestCase):
    def test_examples(self):
        """Typical good and bad paths."""
        for raw, expected in [
            ("one-k.bin", "one-k.bin"), ("/a/b.txt", "a/b.txt"), ("a/.hidden", "a/.hidden"),
            ("a/..b", "a/..b"), ("a//b/", "a//b/"), ("caf\u00e9", "caf\u00e9"),
            ("", None), ("/", None), (".", None), ("..", None), ("a/./b", None),
            ("a/../b", None), ("a/..", None), ("./a", None), ("a\x00b", None), ("a\x7f", None),
            ("a\tb", None), ("x" * 1024, "x" * 1024), ("x" * 1025, None),
            ("\u00e9" * 512, "\u00e9" * 512), ("\u00e9" * 513, None), ("\udcff", None),
        ]:
            self.assertEqual(outcome(raw), expected, repr(raw))

    def test_agrees_with_the_rules(self):
        """On 20,000 random paths built from troublesome pieces, the answer is the rules'."""
        pieces = ["a", "b", "/", ".", "..", "\x00", "\x1f", "\x7f", " ", "\u00e9", "\udcff",
                  "x" * 300, "-", "?"]
        rng = random.Random(3)
        for _ in range(20000):
            raw = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
            self.assertEqual(outcome(raw), reference(raw), repr(raw))
