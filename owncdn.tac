# twistd -ny owncdn.tac: the same daemon as `twistd owncdn`, configured by
# OWNCDN_DATA_DIR and OWNCDN_LISTEN (space-separated endpoint descriptions).
from twisted.application import service
from owncdn.tap import service_from_environment

application = service.Application("owncdn")
service_from_environment().setServiceParent(application)
