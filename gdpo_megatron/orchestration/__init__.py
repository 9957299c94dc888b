"""Ray-side pieces: the cluster, placement, worker actors and how their failures are reported."""
