"""
Tests for L{owncdn.config}: what C{owncdn.json} may contain, what each
value means, and how the file is written.
"""

import copy
import json
import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from owncdn import config
from owncdn.config import ConfigError

KEY_VALUE = "k" * 16
OTHER_VALUE = "v" * 16

# The example of SPEC section 3, with real-looking secrets.
SPEC_EXAMPLE = {
    "instanceName": "edge-1",
    "services": [
        {"id": "api", "type": "api", "host": "*", "port": "*", "cors": False},
        {"id": "media", "type": "storage", "name": "Media", "caseSensitive": True,
         "keepVersions": "30d"},
        {"id": "media-copy", "type": "storage", "replica": {"source": "hq", "sid": "media"}},
        {"id": "origin", "type": "httpfetcher", "sourceUrl": "http://127.0.0.1:9000/",
         "cacheNotFound": 60, "cacheErrors": 10},
        {"id": "hot", "type": "memorycache", "source": "origin", "refresh": "5m",
         "expireUnused": "1h", "maxItemSize": "10MB", "maxMemory": "256MB"},
        {"id": "www", "type": "public", "host": "*", "port": "*", "pathPrefix": "/",
         "source": "hot", "clientCacheSeconds": 3600},
    ],
    "keys": [
        {"id": "EDGEADMIN", "value": KEY_VALUE, "access": "write"},
        {"id": "READER", "value": OTHER_VALUE, "access": {"media": "read", "hot": "write"}},
    ],
    "replicationSources": [
        {"id": "hq", "name": "Headquarters", "url": "http://hq.example:8080/",
         "key": "hq-secret-value-0123"},
    ],
}


def example() -> dict:
    return copy.deepcopy(SPEC_EXAMPLE)


def service(raw: dict, sid: str) -> dict:
    return next(s for s in raw["services"] if s["id"] == sid)


class ValidationTests(SynchronousTestCase):
    """
    L{config.parse} refuses a bad file with a L{ConfigError} that names
    the field.
    """

    def assertRefused(self, raw: dict, *fragments: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.parse(raw)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_unknown_type(self):
        """A service type that does not exist names the type field and the choices."""
        raw = example()
        service(raw, "origin")["type"] = "ftp"
        self.assertRefused(raw, "(origin).type", "'ftp'", "memorycache")

    def test_type_not_a_string(self):
        """A type that is not a string is refused, not a TypeError."""
        raw = example()
        service(raw, "origin")["type"] = ["storage"]
        self.assertRefused(raw, "(origin).type")

    def test_duplicate_service_id(self):
        """Two services with one ID are refused at the second one's id."""
        raw = example()
        raw["services"].append({"id": "media", "type": "storage"})
        self.assertRefused(raw, "services[6].id", "duplicate", "'media'")

    def test_bad_id_characters(self):
        """A service ID with characters outside letters, digits, - _ . is refused."""
        raw = example()
        service(raw, "media")["id"] = "my media"
        self.assertRefused(raw, "services[1].id", "'my media'")

    def test_id_with_trailing_newline(self):
        """An ID ending in a newline is refused (a $ anchor would let it through)."""
        raw = example()
        raw["keys"][0]["id"] = "EDGEADMIN\n"
        self.assertRefused(raw, "keys[0].id")

    def test_id_too_long(self):
        """An ID of 64 characters is refused."""
        raw = example()
        raw["keys"][0]["id"] = "K" * 64
        self.assertRefused(raw, "keys[0].id")

    def test_missing_api_service(self):
        """A file without the api service is refused."""
        raw = example()
        raw["services"] = [s for s in raw["services"] if s["id"] != "api"]
        self.assertRefused(raw, "services", "no api service")

    def test_api_type_with_other_id(self):
        """Only the service with ID api may have type api."""
        raw = example()
        raw["services"].append({"id": "api2", "type": "api"})
        self.assertRefused(raw, "(api2).type")

    def test_source_names_no_service(self):
        """A source naming no service names the source field and the missing ID."""
        raw = example()
        service(raw, "www")["source"] = "nowhere"
        self.assertRefused(raw, "(www).source", "'nowhere'")

    def test_source_cycle(self):
        """Services that are each other's source are refused as a cycle."""
        raw = example()
        raw["services"] += [
            {"id": "a", "type": "memorycache", "source": "b"},
            {"id": "b", "type": "diskcache", "source": "a"},
        ]
        self.assertRefused(raw, "(a).source", "a -> b -> a", "cycle")

    def test_source_is_itself(self):
        """A service that is its own source is a cycle."""
        raw = example()
        service(raw, "hot")["source"] = "hot"
        self.assertRefused(raw, "(hot).source", "cycle")

    def test_source_is_public(self):
        """A public binding serves no files, so it cannot be a source."""
        raw = example()
        service(raw, "hot")["source"] = "www"
        self.assertRefused(raw, "(hot).source", "public")

    def test_source_is_api(self):
        """The api service serves no files, so it cannot be a source."""
        raw = example()
        service(raw, "www")["source"] = "api"
        self.assertRefused(raw, "(www).source", "api service")

    def test_missing_required_field(self):
        """A field a type needs (here filesystem's directory) must be there."""
        raw = example()
        raw["services"].append({"id": "disk", "type": "filesystem"})
        self.assertRefused(raw, "(disk).directory", "missing")

    def test_unknown_service_field(self):
        """A field the service type does not have is refused by name."""
        raw = example()
        service(raw, "media")["colour"] = "blue"
        self.assertRefused(raw, "(media).colour", "unknown field")

    def test_unknown_top_level_field(self):
        """An unknown top-level field is refused by name."""
        raw = example()
        raw["maxUploadSise"] = "1GB"
        self.assertRefused(raw, "maxUploadSise", "unknown")

    def test_bad_duration(self):
        """A duration with an unknown unit names the field and the accepted units."""
        raw = example()
        service(raw, "hot")["refresh"] = "5 minutes"
        self.assertRefused(raw, "(hot).refresh", "'5 minutes'", "s, m, h or d")

    def test_negative_duration(self):
        """A negative number of seconds is not a duration."""
        raw = example()
        service(raw, "origin")["cacheErrors"] = -1
        self.assertRefused(raw, "(origin).cacheErrors")

    def test_infinite_duration(self):
        """Infinity, which Python's JSON reader accepts, is not a duration."""
        raw = example()
        service(raw, "www")["clientCacheSeconds"] = float("inf")
        self.assertRefused(raw, "(www).clientCacheSeconds")

    def test_bad_keep_versions(self):
        """keepVersions is true, false or a duration, nothing else."""
        raw = example()
        service(raw, "media")["keepVersions"] = "forever"
        self.assertRefused(raw, "(media).keepVersions")

    def test_bad_size(self):
        """A size with an unknown unit names the field."""
        raw = example()
        service(raw, "hot")["maxMemory"] = "256 megs"
        self.assertRefused(raw, "(hot).maxMemory", "KB, MB, GB")

    def test_bad_top_level_size(self):
        """maxUploadSize must be a size."""
        raw = example()
        raw["maxUploadSize"] = True
        self.assertRefused(raw, "maxUploadSize")

    def test_bad_access_level(self):
        """A per-service access level other than none, read, write names the key and service."""
        raw = example()
        raw["keys"][1]["access"]["media"] = "admin"
        self.assertRefused(raw, "keys[1] (READER).access.media", "'admin'")

    def test_bad_global_access(self):
        """A key's access that is neither read, write nor an object is refused."""
        raw = example()
        raw["keys"][0]["access"] = "none"
        self.assertRefused(raw, "keys[0] (EDGEADMIN).access")

    def test_access_names_unknown_service(self):
        """Per-service access naming no service is refused."""
        raw = example()
        raw["keys"][1]["access"]["ghost"] = "read"
        self.assertRefused(raw, "keys[1] (READER).access.ghost", "no service")

    def test_missing_access(self):
        """Every key states its access."""
        raw = example()
        del raw["keys"][0]["access"]
        self.assertRefused(raw, "keys[0] (EDGEADMIN).access", "missing")

    def test_key_value_too_short(self):
        """A key value under 16 characters is refused."""
        raw = example()
        raw["keys"][0]["value"] = "short"
        self.assertRefused(raw, "keys[0] (EDGEADMIN).value", "16")

    def test_key_value_not_visible_ascii(self):
        """A key value with a space or a non-ASCII character could not travel in a header."""
        for value in ["with a space inside it", "é" * 16, KEY_VALUE + "\n"]:
            raw = example()
            raw["keys"][0]["value"] = value
            self.assertRefused(raw, "keys[0] (EDGEADMIN).value", "ASCII")

    def test_duplicate_key_values(self):
        """Two keys with one value are refused at the second."""
        raw = example()
        raw["keys"][1]["value"] = KEY_VALUE
        self.assertRefused(raw, "keys[1] (READER).value", "another key")

    def test_duplicate_key_ids(self):
        """Two keys with one ID are refused."""
        raw = example()
        raw["keys"][1]["id"] = "EDGEADMIN"
        self.assertRefused(raw, "keys[1].id", "duplicate")

    def test_replica_names_no_source(self):
        """A replica naming no replication source names the replica's source field."""
        raw = example()
        service(raw, "media-copy")["replica"]["source"] = "branch"
        self.assertRefused(raw, "(media-copy).replica.source", "'branch'")

    def test_replica_missing_sid(self):
        """A replica names the remote service."""
        raw = example()
        del service(raw, "media-copy")["replica"]["sid"]
        self.assertRefused(raw, "(media-copy).replica.sid", "missing")

    def test_bad_port(self):
        """A port outside 1-65535 is refused."""
        for port in [0, 70000, "http", "²", True]:
            raw = example()
            service(raw, "api")["port"] = port
            self.assertRefused(raw, "(api).port")

    def test_bad_url(self):
        """sourceUrl must be an http or https URL with a host and a valid port."""
        for url in ["ftp://example.com/", "example.com", "http://", "http://[::1/",
                    "http://example.com:99999/"]:
            raw = example()
            service(raw, "origin")["sourceUrl"] = url
            self.assertRefused(raw, "(origin).sourceUrl")

    def test_bad_replication_source_url(self):
        """A replication source's URL is checked too."""
        raw = example()
        raw["replicationSources"][0]["url"] = "hq.example:8080"
        self.assertRefused(raw, "replicationSources[0].url")

    def test_replication_source_missing_key(self):
        """A replication source needs the key value to call its primary."""
        raw = example()
        del raw["replicationSources"][0]["key"]
        self.assertRefused(raw, "replicationSources[0].key", "missing")

    def test_source_path_with_dot_segments(self):
        """sourcePath may only hold whole, ordinary path segments."""
        raw = example()
        service(raw, "hot")["sourcePath"] = "a/../b"
        self.assertRefused(raw, "(hot).sourcePath")

    def test_path_prefix_without_slash(self):
        """pathPrefix starts with a slash."""
        raw = example()
        service(raw, "www")["pathPrefix"] = "static"
        self.assertRefused(raw, "(www).pathPrefix")

    def test_bad_quality(self):
        """The image optimizer's quality is 1 to 100."""
        raw = example()
        raw["services"].append(
            {"id": "img", "type": "imageoptimizer", "source": "media", "quality": 101})
        self.assertRefused(raw, "(img).quality")

    def test_services_not_a_list(self):
        """services must be a list of objects."""
        raw = example()
        raw["services"] = {"api": {"type": "api"}}
        self.assertRefused(raw, "services", "list")

    def test_not_an_object(self):
        """The file must hold a JSON object."""
        self.assertRefused([], "JSON object")


class LoadTests(SynchronousTestCase):
    """
    L{config.load} turns unreadable files into a L{ConfigError} too.
    """

    def setUp(self):
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir()

    def assertLoadRefused(self, *fragments: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.load(self.data_dir)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_invalid_json_names_line(self):
        """Invalid JSON is reported with its line and column."""
        (self.data_dir / config.CONFIG_NAME).write_text('{\n  "services": [\n    {"id": "api",,}\n')
        self.assertLoadRefused("invalid JSON", "line 3")

    def test_missing_file(self):
        """A missing file is reported as such."""
        self.assertLoadRefused("no configuration file")

    def test_not_utf8(self):
        """A file that is not UTF-8 is reported as such."""
        (self.data_dir / config.CONFIG_NAME).write_bytes(b'{"instanceName": "\xff"}')
        self.assertLoadRefused("UTF-8")

    def test_unreadable(self):
        """A file that cannot be read (here a folder) is a ConfigError, not a traceback."""
        (self.data_dir / config.CONFIG_NAME).mkdir()
        self.assertLoadRefused("cannot read")

    def test_infinity_in_json(self):
        """A bare Infinity in the file is refused by field."""
        raw = example()
        service(raw, "hot")["refresh"] = float("inf")
        (self.data_dir / config.CONFIG_NAME).write_text(json.dumps(raw))
        self.assertLoadRefused("(hot).refresh")


class GoodFileTests(SynchronousTestCase):
    """
    Valid files parse into the values they mean, defaults filled in.
    """

    def setUp(self):
        self.config = config.parse(example())

    def options(self, sid: str) -> dict:
        return self.config.service(sid).options

    def test_spec_example(self):
        """The example of SPEC section 3 is valid, services and keys in file order."""
        self.assertEqual(self.config.instance_name, "edge-1")
        self.assertEqual([s.id for s in self.config.services],
                         ["api", "media", "media-copy", "origin", "hot", "www"])
        self.assertEqual([k.id for k in self.config.keys], ["EDGEADMIN", "READER"])
        self.assertEqual(self.config.keys[1].access, {"media": "read", "hot": "write"})

    def test_durations_in_seconds(self):
        """Duration strings become seconds: 5m is 300, 1h 3600, 30d 2592000."""
        self.assertEqual(self.options("hot")["refresh"], 300)
        self.assertEqual(self.options("hot")["expireUnused"], 3600)
        self.assertEqual(self.options("media")["keepVersions"], 30 * 86400)
        self.assertEqual(self.options("origin")["cacheNotFound"], 60)

    def test_sizes_in_bytes(self):
        """Size strings become bytes in powers of 1024: 10MB is 10485760."""
        self.assertEqual(self.options("hot")["maxItemSize"], 10485760)
        self.assertEqual(self.options("hot")["maxMemory"], 256 * 1024**2)

    def test_unit_parsers(self):
        """parse_duration and parse_size accept numbers and every documented unit."""
        where = "test"
        self.assertEqual(config.parse_duration(45, where), 45)
        self.assertEqual(config.parse_duration("30s", where), 30)
        self.assertEqual(config.parse_duration("1.5h", where), 5400)
        self.assertEqual(config.parse_duration("2d", where), 172800)
        self.assertEqual(config.parse_size(123, where), 123)
        self.assertEqual(config.parse_size("1KB", where), 1024)
        self.assertEqual(config.parse_size("10 mb", where), 10485760)
        self.assertEqual(config.parse_size("2GB", where), 2 * 1024**3)

    def test_star_means_any(self):
        """host and port "*" mean any (None)."""
        self.assertIsNone(self.options("api")["host"])
        self.assertIsNone(self.options("api")["port"])

    def test_service_defaults(self):
        """Fields left out take the defaults of SERVICE_FIELDS."""
        raw = example()
        raw["services"].append({"id": "cold", "type": "memorycache", "source": "media"})
        options = config.parse(raw).service("cold").options
        self.assertEqual(options["maxItemSize"], 10 * 1024**2)
        self.assertEqual(options["maxMemory"], 256 * 1024**2)
        self.assertEqual(options["caseSensitive"], True)
        self.assertEqual(options["refresh"], 0)
        self.assertEqual(options["sourcePath"], "")
        self.assertEqual(self.options("media-copy")["keepVersions"], True)
        self.assertEqual(self.options("www")["pathPrefix"], "/")

    def test_name_defaults_to_id(self):
        """A service without a name is named by its ID."""
        self.assertEqual(self.config.service("media").name, "Media")
        self.assertEqual(self.config.service("hot").name, "hot")

    def test_top_level_defaults(self):
        """maxUploadSize defaults to 5GB, headerTimeout to 30 seconds, bodyTimeout to 60, s3UploadExpiry to 7 days."""
        self.assertEqual(self.config.max_upload_size, 5 * 1024**3)
        self.assertEqual(self.config.header_timeout, 30)
        self.assertEqual(self.config.body_timeout, 60)
        self.assertEqual(self.config.s3_upload_expiry, 7 * 86400)
        self.assertEqual(self.config.s3_region, "us-east-1")

    def test_s3_region(self):
        """s3Region takes a region name; anything else is refused, naming the field."""
        raw = example()
        raw["s3Region"] = "eu-central-1"
        self.assertEqual(config.parse(raw).s3_region, "eu-central-1")
        for bad in ["", "EU-WEST-1", "eu west", "eu-west-1\n", "-eu", "a" * 40, "x<y>", 3]:
            raw["s3Region"] = bad
            error = self.assertRaises(config.ConfigError, config.parse, raw)
            self.assertIn("s3Region", str(error))

    def test_top_level_limits(self):
        """maxUploadSize and headerTimeout take units."""
        raw = example()
        raw.update(maxUploadSize="1GB", headerTimeout="1m", bodyTimeout="2m", s3UploadExpiry="2d")
        parsed = config.parse(raw)
        self.assertEqual(parsed.max_upload_size, 1024**3)
        self.assertEqual(parsed.header_timeout, 60)
        self.assertEqual(parsed.body_timeout, 120)
        self.assertEqual(parsed.s3_upload_expiry, 2 * 86400)

    def test_keep_versions_booleans(self):
        """keepVersions false keeps no old versions, true keeps them forever."""
        raw = example()
        service(raw, "media")["keepVersions"] = False
        self.assertIs(config.parse(raw).service("media").options["keepVersions"], False)

    def test_replication_source(self):
        """A replication source keeps its name, URL and key."""
        source = self.config.source("hq")
        self.assertEqual((source.name, source.url, source.key),
                         ("Headquarters", "http://hq.example:8080/", "hq-secret-value-0123"))

    def test_secrets_not_in_repr(self):
        """Key values and replication keys stay out of repr, so out of logs."""
        self.assertNotIn(KEY_VALUE, repr(self.config))
        self.assertNotIn("hq-secret-value-0123", repr(self.config))


class SaveTests(SynchronousTestCase):
    """
    L{config.save} validates, then replaces the file atomically with mode
    0600.
    """

    def setUp(self):
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir()
        self.path = self.data_dir / config.CONFIG_NAME

    def test_mode_0600(self):
        """The file is written with mode 0600 whatever the umask."""
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        config.save(self.data_dir, example())
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_replaces_loose_mode(self):
        """Saving over a file someone made world-readable leaves a 0600 file."""
        self.path.write_text("{}")
        self.path.chmod(0o644)
        config.save(self.data_dir, example())
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_round_trip(self):
        """What save writes, load reads back as the same JSON."""
        config.save(self.data_dir, example())
        self.assertEqual(config.load(self.data_dir).raw, SPEC_EXAMPLE)

    def test_atomic_replace(self):
        """save writes a new file and renames it over the old: the old inode is never rewritten."""
        self.path.write_text("old")
        old_inode = self.path.stat().st_ino
        config.save(self.data_dir, example())
        self.assertNotEqual(self.path.stat().st_ino, old_inode)
        self.assertEqual(os.listdir(self.data_dir), [config.CONFIG_NAME])

    def test_invalid_not_written(self):
        """An invalid configuration is refused and the file left as it was."""
        config.save(self.data_dir, example())
        before = self.path.read_bytes()
        raw = example()
        raw["keys"][0]["value"] = "short"
        self.assertRaises(ConfigError, config.save, self.data_dir, raw)
        self.assertEqual(self.path.read_bytes(), before)

    def test_failed_write_keeps_old_file(self):
        """A write that fails half-way leaves the old file and no temporary file."""
        config.save(self.data_dir, example())
        before = self.path.read_bytes()

        def broken_fsync(fd):
            raise OSError(28, "No space left on device")

        self.patch(config.os, "fsync", broken_fsync)
        raw = example()
        raw["instanceName"] = "changed"
        self.assertRaises(OSError, config.save, self.data_dir, raw)
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(os.listdir(self.data_dir), [config.CONFIG_NAME])


class DefaultConfigTests(SynchronousTestCase):
    """
    A fresh data folder gets a working default, and its key value is
    handed out once.
    """

    def setUp(self):
        self.data_dir = Path(self.mktemp())

    def test_default_is_valid(self):
        """default_config gives the api service, a storage service and one write key holding the returned value."""
        raw, value = config.default_config()
        parsed = config.parse(raw)
        self.assertEqual(sorted(s.type for s in parsed.services), ["api", "storage"])
        self.assertEqual([(k.value, k.access) for k in parsed.keys], [(value, "write")])

    def test_fresh_values(self):
        """Every default gets its own key ID and value."""
        (raw1, value1), (raw2, value2) = config.default_config(), config.default_config()
        self.assertNotEqual(value1, value2)
        self.assertNotEqual(raw1["keys"][0]["id"], raw2["keys"][0]["id"])

    def test_new_key_id_and_value_are_valid(self):
        """Generated key IDs and values pass validation's rules."""
        self.assertTrue(config.ID_PATTERN.match(config.new_key_id()))
        self.assertGreaterEqual(len(config.new_key_value()), 16)

    def test_init_first_time(self):
        """init_data_dir creates a private folder and a 0600 file, and returns the key value."""
        parsed, value = config.init_data_dir(self.data_dir)
        self.assertEqual(parsed.keys[0].value, value)
        self.assertEqual(stat.S_IMODE(self.data_dir.stat().st_mode), 0o700)
        mode = (self.data_dir / config.CONFIG_NAME).stat().st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    def test_init_second_time(self):
        """A second init_data_dir returns no value and leaves the file unchanged."""
        config.init_data_dir(self.data_dir)
        before = (self.data_dir / config.CONFIG_NAME).read_bytes()
        parsed, value = config.init_data_dir(self.data_dir)
        self.assertIsNone(value)
        self.assertEqual((self.data_dir / config.CONFIG_NAME).read_bytes(), before)
        self.assertEqual(len(parsed.keys), 1)
