"""The driver: the steps of Connectile as resumable stages of a run directory."""
