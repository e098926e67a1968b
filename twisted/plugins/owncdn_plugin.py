from twisted.application.service import ServiceMaker

OwnCDN = ServiceMaker(
    "OwnCDN", "owncdn.tap", "Self-hosted CDN node and object store", "owncdn"
)
