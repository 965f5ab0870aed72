"""Running the one runtime on a Ray cluster: `--ray [ADDRESS]` activates it, `run_graph` then spreads episodes
over Ray actor workers with one store-writer actor. Importing this package does not import Ray."""

from rolegraph.cluster.settings import ClusterError, ClusterSettings, activate, active, deactivate

__all__ = ["ClusterError", "ClusterSettings", "activate", "active", "deactivate"]
