"""
Tests for L{owncdn.testing}: the in-memory fake keeps the storage
contract.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from owncdn.testing import MemoryFiles
from tests.storage_contract import FileServiceContractMixin


class MemoryFilesContractTests(FileServiceContractMixin, SynchronousTestCase):
    """
    The shared contract, against L{MemoryFiles}.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        super().setUp()

    def make_files(self, case_sensitive: bool = True) -> MemoryFiles:
        return MemoryFiles(self.clock, case_sensitive=case_sensitive)
