"""
What ships: the wheel carries the twistd plugin, and the installed
package gives C{twistd owncdn}.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.internet import reactor, utils
from twisted.trial.unittest import TestCase

from tests.util import asynctest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "twisted/plugins/owncdn_plugin.py"
BUILD_TIMEOUT = 120
RUN_TIMEOUT = 60


def clean_environment() -> dict:
    """
    The environment without anything that would put the source tree
    on the path: what runs must be the installed package.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


async def run(args: list[str], cwd: Path, timeout: float = RUN_TIMEOUT) -> tuple[bytes, bytes, int]:
    return await utils.getProcessOutputAndValue(
        sys.executable, args, env=clean_environment(), path=str(cwd)
    ).addTimeout(timeout, reactor)


def source_files() -> list[str]:
    """
    The files of the working tree that git tracks or would track.
    """
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, timeout=RUN_TIMEOUT,
    ).stdout
    return [name for name in listing.decode().split("\0")
            if name and (ROOT / name).is_file()]


class PackagingTests(TestCase):
    def setUp(self):
        if shutil.which("git") is None or not (ROOT / ".git").exists():
            self.skipTest("needs a git checkout to know the source files")

    def copy_source(self) -> Path:
        """
        The source tree, without caches and test leftovers, in a fresh
        folder, so the build neither sees nor leaves anything in ROOT.
        """
        copy = Path(self.mktemp()).absolute() / "src"
        for name in source_files():
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        return copy

    @asynctest
    async def test_wheel_contains_plugin(self):
        """The built wheel has the twistd plugin, no twisted/plugins/__init__.py, and every owncdn package."""
        source = self.copy_source()
        out = source.parent / "dist"
        stdout, stderr, code = await run(
            ["-m", "build", "--wheel", "--outdir", str(out), str(source)],
            cwd=source.parent, timeout=BUILD_TIMEOUT)
        self.assertEqual(code, 0, (stdout + stderr).decode(errors="replace")[-3000:])
        [wheel] = out.glob("*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn(PLUGIN, names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertFalse([n for n in names if n.endswith("dropin.cache")])
        self.assertIn("owncdn/openapi.json", names)
        packages = {str(path.parent.relative_to(source))
                    for path in (source / "owncdn").rglob("*.py")}
        shipped = {str(Path(n).parent) for n in names if n.endswith(".py")}
        self.assertEqual(packages - shipped, set(),
                         "packages missing from the wheel: list them in setup.cfg")

    @asynctest
    async def test_twistd_help(self):
        """twistd owncdn --help works from the installed package, outside the source tree."""
        stdout, stderr, code = await run(
            ["-c", "import sys; from twisted.scripts.twistd import run; "
                   "sys.argv[0] = 'twistd'; run()", "owncdn", "--help"],
            cwd=Path(self.mktemp()).absolute().parent)
        self.assertEqual(code, 0, stderr.decode(errors="replace"))
        self.assertIn(b"--data-dir", stdout)
        self.assertIn(b"--listen", stdout)

    @asynctest
    async def test_plugin_import_is_cheap(self):
        """Importing the plugin module does not import the daemon (twistd imports every plugin)."""
        stdout, stderr, code = await run(
            ["-c", "import sys, twisted.plugins.owncdn_plugin as p; "
                   "print(p.__file__); print('owncdn.tap' in sys.modules)"],
            cwd=Path(self.mktemp()).absolute().parent)
        self.assertEqual(code, 0, stderr.decode(errors="replace"))
        self.assertEqual(stdout.split()[-1], b"False")
