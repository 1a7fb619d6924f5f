"""The Schema Registry, as the bridge reads records in its wire format.

``SchemaRegistry`` wraps confluent-kafka's asynchronous registry client (REST calls,
authentication, TLS and the HTTP-level caches are the library's): writer schemas by
id and subjects' latest versions, parsed once and kept, with the registry's failures
sorted into dead letters (an id it does not know) and transient errors (it does not
answer).
"""

from bridge.registry.client import SchemaRegistry, registry_config

__all__ = ["SchemaRegistry", "registry_config"]
