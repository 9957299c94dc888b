"""`gdpo launch`: cluster profiles, the Ray-on-Slurm bootstrap and the nemo-run experiment."""

from .experiment import LaunchSpec, build_experiment, make_spec, path_in_container
from .profile import ClusterProfile, load_profile
from .submit import submit

__all__ = ["ClusterProfile", "LaunchSpec", "build_experiment", "load_profile", "make_spec", "path_in_container", "submit"]
