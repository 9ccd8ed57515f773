"""Several instances on one Redis: a registry of instances with leases, a session directory.

Without ``BRIDGE_REDIS_URL`` nothing here runs and a single instance is what it always was.
"""

from .admission import ClusterAdmission, ClusterAdmissionStatistics, Verdict
from .directory import DirectoryEntry, InstanceEntry
from .node import ClusterNode, ClusterStatistics, RedisUnavailable
from .window import GlobalWindow

__all__ = [
    "ClusterAdmission",
    "ClusterAdmissionStatistics",
    "ClusterNode",
    "ClusterStatistics",
    "DirectoryEntry",
    "GlobalWindow",
    "InstanceEntry",
    "RedisUnavailable",
    "Verdict",
]
