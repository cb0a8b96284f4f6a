"""Test support: real-server resolution, per-test namespaces, migrations."""

from tests.support.servers import (
    Namespace,
    cleanup_namespace,
    delete_namespace_streams,
    downgrade,
    drop_namespace_schemas,
    migrate,
    new_namespace,
)

__all__ = [
    "Namespace",
    "cleanup_namespace",
    "delete_namespace_streams",
    "downgrade",
    "drop_namespace_schemas",
    "migrate",
    "new_namespace",
]
