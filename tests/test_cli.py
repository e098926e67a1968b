"""
Tests for L{owncdn.cli}, the C{owncdn} admin command, driven in-process
through L{main} and once through the installed console script.
"""

import io
import json
import os
import stat
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from owncdn import cli, config, lockfile
from owncdn.cli import status as cli_status
from owncdn.storage.engine import StorageEngine

REPLICATION_KEY = "hq-secret-value-0123"


class CommandTestCase(SynchronousTestCase):
    """
    A fresh data folder made by C{owncdn init}, and a way to run the
    command in it.
    """

    def setUp(self):
        self.data_dir = Path(self.mktemp())
        self.path = self.data_dir / config.CONFIG_NAME
        self.set_environment(None)
        code, out, _ = self.run_owncdn("init")
        self.assertEqual(code, 0)
        self.first_key_value = self.value_line(out)

    def set_environment(self, data_dir: str | None) -> None:
        """
        Set (or with C{None} unset) OWNCDN_DATA_DIR for this test.
        """
        self.addCleanup(self._restore_environment, os.environ.get("OWNCDN_DATA_DIR"))
        self._restore_environment(data_dir)

    @staticmethod
    def _restore_environment(value: str | None) -> None:
        if value is None:
            os.environ.pop("OWNCDN_DATA_DIR", None)
        else:
            os.environ["OWNCDN_DATA_DIR"] = value

    def run_owncdn(self, *argv: str, data_dir: bool = True) -> tuple[int, str, str]:
        """
        Run C{owncdn argv...} in this process: the exit status, stdout
        and stderr.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        prefix = ["--data-dir", str(self.data_dir)] if data_dir else []
        with redirect_stdout(stdout), redirect_stderr(stderr):
            code = cli.main(prefix + list(argv))
        return code, stdout.getvalue(), stderr.getvalue()

    def ok(self, *argv: str) -> str:
        code, out, err = self.run_owncdn(*argv)
        self.assertEqual((code, err), (0, ""))
        return out

    def refused(self, *argv: str, code: int = 1) -> str:
        """
        Run a command that must fail without touching the file; return
        its one-line error.
        """
        before = self.path.read_bytes()
        got, out, err = self.run_owncdn(*argv)
        self.assertEqual(got, code)
        self.assertEqual(out, "")
        self.assertEqual(self.path.read_bytes(), before)
        if code == 1:
            self.assertEqual(len(err.splitlines()), 1, err)
        return err

    @staticmethod
    def value_line(out: str) -> str:
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Key value:"))

    def saved(self) -> dict:
        return json.loads(self.path.read_text())

    def secrets(self) -> list[str]:
        """
        Every secret in the file: key values and replication keys.
        """
        raw = self.saved()
        return ([k["value"] for k in raw["keys"]]
                + [s["key"] for s in raw.get("replicationSources", [])])

    def assertNoSecrets(self, text: str) -> None:
        for secret in self.secrets():
            self.assertNotIn(secret, text)


class InitTests(CommandTestCase):
    """
    C{owncdn init} writes the default configuration and shows its key once.
    """

    def test_prints_key_of_file(self):
        """init prints the ID and value of the key it wrote."""
        key = self.saved()["keys"][0]
        self.assertEqual(key["value"], self.first_key_value)
        self.assertEqual(key["access"], "write")

    def test_refuses_existing(self):
        """A second init refuses politely and changes nothing."""
        err = self.refused("init")
        self.assertIn("already exists", err)

    def test_file_mode(self):
        """The configuration init writes has mode 0600."""
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)


class DataDirTests(CommandTestCase):
    """
    The data folder comes from --data-dir (before or after the
    subcommand), else OWNCDN_DATA_DIR, else ./owncdn-data.
    """

    def test_after_subcommand(self):
        """--data-dir after the subcommand works too."""
        code, out, _ = self.run_owncdn("key", "list", "--data-dir", str(self.data_dir),
                                       data_dir=False)
        self.assertEqual(code, 0)
        self.assertIn(self.saved()["keys"][0]["id"], out)

    def test_environment(self):
        """OWNCDN_DATA_DIR is used when --data-dir is not given."""
        self.set_environment(str(self.data_dir))
        code, out, _ = self.run_owncdn("status", data_dir=False)
        self.assertEqual(code, 0)
        self.assertIn(str(self.data_dir.resolve()), out)

    def test_option_beats_environment(self):
        """--data-dir wins over OWNCDN_DATA_DIR."""
        self.set_environment(self.mktemp())
        self.ok("status")

    def test_default(self):
        """Without option or variable the folder is ./owncdn-data."""
        args = cli.build_parser().parse_args(["status"])
        self.assertEqual(cli.data_dir_of(args), Path("owncdn-data"))

    def test_missing_configuration(self):
        """A folder without owncdn.json is one error line pointing at init."""
        code, _, err = self.run_owncdn("--data-dir", self.mktemp(), "service", "list",
                                       data_dir=False)
        self.assertEqual(code, 1)
        self.assertIn("owncdn init", err)
        self.assertEqual(len(err.splitlines()), 1)

    def test_usage_error(self):
        """An unknown subcommand is a usage error, status 2."""
        self.assertEqual(self.run_owncdn("frobnicate")[0], 2)


class KeyTests(CommandTestCase):
    """
    C{owncdn key ...} manages API keys and never shows a value twice.
    """

    def test_add_prints_value_once(self):
        """key add prints the new value, which is then in the file and nowhere in later output."""
        out = self.ok("key", "add", "--id", "READER", "--access", "files=read")
        value = self.value_line(out)
        key = self.saved()["keys"][1]
        self.assertEqual(key, {"id": "READER", "value": value, "access": {"files": "read"}})
        for command in [("key", "list"), ("status",), ("service", "list")]:
            self.assertNotIn(value, self.ok(*command))

    def test_add_default_access_is_read(self):
        """A key added without --access can read everything and write nothing."""
        self.ok("key", "add", "--id", "K2")
        self.assertEqual(self.saved()["keys"][1]["access"], "read")

    def test_add_generates_id(self):
        """key add without --id makes a valid random ID."""
        self.ok("key", "add")
        self.assertTrue(config.ID_PATTERN.match(self.saved()["keys"][1]["id"]))

    def test_list_never_shows_values(self):
        """key list shows IDs and access but no value."""
        self.ok("key", "add", "--id", "READER", "--access", "files=read")
        out = self.ok("key", "list")
        self.assertIn("READER", out)
        self.assertIn("files=read", out)
        self.assertNoSecrets(out)

    def test_add_duplicate_id(self):
        """key add refuses an ID in use."""
        self.ok("key", "add", "--id", "K2")
        self.assertIn("exists", self.refused("key", "add", "--id", "K2"))

    def test_add_access_to_unknown_service(self):
        """Access naming no service is refused by validation, naming the service."""
        self.assertIn("ghost", self.refused("key", "add", "--access", "ghost=read"))

    def test_bad_access_level(self):
        """An access level other than none/read/write is a usage error."""
        self.refused("key", "add", "--access", "files=admin", code=2)

    def test_bad_key_id(self):
        """An ID with a space is refused by validation."""
        self.refused("key", "add", "--id", "my key")

    def test_set_access(self):
        """key access replaces a key's access."""
        self.ok("key", "add", "--id", "K2")
        self.ok("key", "access", "K2", "files=write,api=none")
        self.assertEqual(self.saved()["keys"][1]["access"], {"files": "write", "api": "none"})

    def test_remove(self):
        """key remove deletes the key."""
        first = self.saved()["keys"][0]["id"]
        self.ok("key", "add", "--id", "K2")
        self.ok("key", "remove", "K2")
        self.assertEqual([k["id"] for k in self.saved()["keys"]], [first])

    def test_remove_unknown(self):
        """Removing a key that does not exist is refused."""
        self.assertIn("'NOPE'", self.refused("key", "remove", "NOPE"))

    def test_mode_stays_0600(self):
        """Each edit leaves the file at mode 0600, even if someone loosened it."""
        self.path.chmod(0o644)
        self.ok("key", "add", "--id", "K2")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.ok("key", "remove", "K2")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)


class ServiceTests(CommandTestCase):
    """
    C{owncdn service ...} adds, shows and removes services, keeping the
    file valid.
    """

    def test_list(self):
        """service list shows each service's ID, type and name."""
        out = self.ok("service", "list")
        self.assertIn("files", out)
        self.assertIn("storage", out)
        self.assertIn("Files", out)

    def test_add_with_json_values(self):
        """--set values are JSON where they parse as JSON, else strings."""
        self.ok("service", "add", "www", "--type", "public", "--set", "source=files",
                "--set", "port=8080", "--set", "cors=true", "--set", "name=Web site",
                "--set", 'pathPrefix="/static/"')
        self.assertEqual(self.saved()["services"][-1], {
            "id": "www", "type": "public", "source": "files", "port": 8080,
            "cors": True, "name": "Web site", "pathPrefix": "/static/"})

    def test_show(self):
        """service show prints the service as JSON."""
        self.ok("service", "add", "hot", "--type", "memorycache", "--set", "source=files",
                "--set", "maxMemory=64MB")
        shown = json.loads(self.ok("service", "show", "hot"))
        self.assertEqual(shown, {"id": "hot", "type": "memorycache", "source": "files",
                                 "maxMemory": "64MB"})

    def test_show_unknown(self):
        """service show of an unknown ID is refused."""
        self.refused("service", "show", "nope")

    def test_add_invalid(self):
        """A service the validation refuses is not saved, and the error names the field."""
        err = self.refused("service", "add", "www", "--type", "public")
        self.assertIn("(www).source", err)

    def test_add_unknown_type(self):
        """An unknown --type is a usage error."""
        self.refused("service", "add", "x", "--type", "ftp", code=2)

    def test_add_existing(self):
        """Adding a service with an ID in use is refused."""
        self.assertIn("exists", self.refused("service", "add", "files", "--type", "storage"))

    def test_set_id_refused(self):
        """--set cannot change the ID or type."""
        self.refused("service", "add", "x", "--type", "storage", "--set", "id=y", code=2)

    def test_remove_api_refused(self):
        """The api service cannot be removed."""
        self.assertIn("api", self.refused("service", "remove", "api"))

    def test_remove_source_in_use_refused(self):
        """A service another one uses as its source cannot be removed."""
        self.ok("service", "add", "www", "--type", "public", "--set", "source=files")
        self.assertIn("www", self.refused("service", "remove", "files"))

    def test_remove_unknown(self):
        """Removing a service that does not exist is refused."""
        self.refused("service", "remove", "nope")

    def test_remove_drops_access(self):
        """Removing a service also removes it from per-service key access."""
        self.ok("key", "add", "--id", "K2", "--access", "files=read,api=read")
        out = self.ok("service", "remove", "files")
        self.assertIn("K2", out)
        self.assertEqual([s["id"] for s in self.saved()["services"]], ["api"])
        self.assertEqual(self.saved()["keys"][1]["access"], {"api": "read"})

    def test_remove_keeps_database(self):
        """Removing a storage service keeps its database file and says so."""
        (self.data_dir / "files.db").write_bytes(b"data")
        out = self.ok("service", "remove", "files")
        self.assertIn("files.db", out)
        self.assertTrue((self.data_dir / "files.db").exists())


class SourceTests(CommandTestCase):
    """
    C{owncdn source ...} manages replication sources and never shows
    their keys.
    """

    def setUp(self):
        super().setUp()
        self.ok("source", "add", "hq", "--url", "http://hq.example:8080/",
                "--key", REPLICATION_KEY, "--name", "Headquarters")

    def test_add(self):
        """source add writes the source with its name, URL and key."""
        self.assertEqual(self.saved()["replicationSources"], [
            {"id": "hq", "url": "http://hq.example:8080/", "key": REPLICATION_KEY,
             "name": "Headquarters"}])

    def test_list_never_shows_keys(self):
        """source list shows the source and its replicas but not its key."""
        self.ok("service", "add", "copy", "--type", "storage",
                "--set", 'replica={"source": "hq", "sid": "media"}')
        out = self.ok("source", "list")
        self.assertIn("http://hq.example:8080/", out)
        self.assertIn("copy", out)
        self.assertNoSecrets(out)

    def test_add_bad_url(self):
        """A URL that is not http(s) is refused by validation."""
        self.assertIn("url", self.refused("source", "add", "b", "--url", "hq:8080",
                                          "--key", REPLICATION_KEY))

    def test_add_existing(self):
        """Adding a source with an ID in use is refused."""
        self.refused("source", "add", "hq", "--url", "http://x/", "--key", REPLICATION_KEY)

    def test_remove_used_refused(self):
        """A source a replica uses cannot be removed."""
        self.ok("service", "add", "copy", "--type", "storage",
                "--set", 'replica={"source": "hq", "sid": "media"}')
        self.assertIn("copy", self.refused("source", "remove", "hq"))

    def test_remove(self):
        """source remove deletes an unused source."""
        self.ok("source", "remove", "hq")
        self.assertEqual(self.saved()["replicationSources"], [])

    def test_remove_unknown(self):
        """Removing a source that does not exist is refused."""
        self.refused("source", "remove", "nope")


class StatusTests(CommandTestCase):
    """
    C{owncdn status} shows the instance, its services and the daemon.
    """

    def hold_lock(self, note: str) -> None:
        # flock conflicts between two open file descriptions even within
        # one process, so the daemon's lock can be held right here.
        lock = lockfile.FileLock(self.data_dir / cli.LOCK_NAME)
        lock.acquire(note)
        self.addCleanup(lock.release)

    def test_not_running(self):
        """Without the daemon's lock held, status says not running."""
        out = self.ok("status")
        self.assertIn("not running", out)
        self.assertIn("owncdn", out)

    def test_stale_lock_file(self):
        """A lock file left by a dead daemon does not count as running."""
        (self.data_dir / cli.LOCK_NAME).write_text('{"pid": 99999}')
        self.assertIn("not running", self.ok("status"))

    def test_running(self):
        """With the lock held, status shows running, the pid and the listen addresses."""
        self.hold_lock(json.dumps({"pid": 4321, "listen": ["tcp:8080", "ssl:8443"]}))
        out = self.ok("status")
        self.assertIn("running, pid 4321, listening on tcp:8080, ssl:8443", out)
        self.assertNotIn("not running", out)

    def test_running_without_note(self):
        """A held lock without a readable note still means running."""
        self.hold_lock("")
        self.assertIn("running", self.ok("status"))
        self.assertNotIn("not running", self.ok("status"))

    def test_reload_hint(self):
        """With a daemon running, a key change says how to make it reload."""
        self.hold_lock(json.dumps({"pid": 4321}))
        self.assertIn("kill -HUP 4321", self.ok("key", "add"))

    def test_restart_hint(self):
        """With a daemon running, a service change says a restart is needed."""
        self.hold_lock(json.dumps({"pid": 4321}))
        self.assertIn("restart", self.ok("service", "add", "more", "--type", "storage"))

    def test_services(self):
        """status lists every service with its type and name."""
        out = self.ok("status")
        self.assertIn("files    storage  Files", out)
        self.assertIn("api", out)

    def test_database_size(self):
        """A storage service's database file size is shown when the file exists."""
        (self.data_dir / "files.db").write_bytes(b"x" * 3 * 1024 * 1024)
        self.assertIn("database 3.0 MB", self.ok("status"))

    def test_no_secrets(self):
        """status prints no key value and no replication key."""
        self.ok("source", "add", "hq", "--url", "http://hq/", "--key", REPLICATION_KEY)
        self.assertNoSecrets(self.ok("status"))

    def test_detail_hook(self):
        """A function appended to STATUS_DETAILS adds its text to a service's line."""
        self.patch(cli_status, "STATUS_DETAILS", cli_status.STATUS_DETAILS + [
            lambda data_dir, service: "replicating" if service.id == "files" else None])
        line = next(line for line in self.ok("status").splitlines()
                    if line.startswith("files "))
        self.assertIn("replicating", line)


class ConsoleScriptTests(SynchronousTestCase):
    """
    The installed C{owncdn} console script runs L{cli.main}.
    """

    def test_installed_script(self):
        """The owncdn script beside this Python initialises a folder and exits 0, 1 on refusal."""
        script = Path(sys.executable).parent / "owncdn"
        self.assertTrue(script.exists(), f"{script} missing: pip install -e '.[test]'")
        data_dir = self.mktemp()

        def run(*argv):
            return subprocess.run([str(script), "--data-dir", data_dir, *argv],
                                  capture_output=True, text=True, timeout=60)

        created = run("init")
        self.assertEqual(created.returncode, 0, created.stderr)
        value = next(line.split(":", 1)[1].strip() for line in created.stdout.splitlines()
                     if line.startswith("Key value:"))
        listed = run("key", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertNotIn(value, listed.stdout)
        again = run("init")
        self.assertEqual(again.returncode, 1)
        self.assertIn("already exists", again.stderr)


class LogAndRewindTests(CommandTestCase):
    """
    C{owncdn log} and C{owncdn rewind} on the storage database of the
    C{files} service.
    """

    def setUp(self):
        super().setUp()
        self.database = self.data_dir / "files.db"
        engine = StorageEngine(self.database)
        engine.open()
        # 2023-11-14 22:13:20, 22:15:00 and 22:16:40 UTC.
        engine.put("a.txt", io.BytesIO(b"one"), "text/plain", None, None, None, 1700000000.0)
        engine.put("b.txt", io.BytesIO(b"two!"), "text/plain", None, None, None, 1700000100.0)
        engine.delete("a.txt", 1700000200.0)
        engine.close()

    def change_ids(self, out: str) -> list[str]:
        return [line.split()[0] for line in out.splitlines()[1:]]

    def test_log_newest_first(self):
        """log lists the changes newest first with their UTC time, op and path."""
        out = self.ok("log", "files")
        self.assertEqual(self.change_ids(out), ["3", "2", "1"])
        self.assertIn("2023-11-14 22:15:00  put", out)

    def test_log_forward_from_time(self):
        """log --forward --from-time lists oldest first from that UTC time on."""
        out = self.ok("log", str(self.database), "--forward", "--from-time", "20231114221400")
        self.assertEqual(self.change_ids(out), ["2", "3"])

    def test_rewind_to_id(self):
        """rewind --to-id removes the later changes from the log."""
        self.assertIn("2 later changes removed", self.ok("rewind", "files", "--to-id", "1"))
        self.assertEqual(self.change_ids(self.ok("log", "files")), ["1"])

    def test_refuses_database_in_use(self):
        """log and rewind refuse a database a daemon holds open, in one error line."""
        lock = lockfile.FileLock(Path(f"{self.database}.lock"))
        lock.acquire()
        self.addCleanup(lock.release)
        self.assertIn("running daemon", self.refused("log", "files"))
        self.assertIn("running daemon", self.refused("rewind", "files", "--to-id", "1"))

    def test_unknown_database(self):
        """A DB that is neither a file nor a service's database is refused."""
        self.assertIn("no such database", self.refused("log", "nothing"))

    def test_bad_time(self):
        """A time not written as YYYYMMDDHHMMSS is a usage error."""
        self.refused("rewind", "files", "--to-time", "2023-11-14", code=2)
