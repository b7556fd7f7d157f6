"""Time-machine backups: a content-addressed object store and snapshot manifests per mailbox."""

from provider.backup.manifest import Manifest, ManifestFolder, ManifestMessage
from provider.backup.store import BackupStore, DamagedObject, MissingObject

__all__ = [
    "BackupStore",
    "DamagedObject",
    "Manifest",
    "ManifestFolder",
    "ManifestMessage",
    "MissingObject",
]
