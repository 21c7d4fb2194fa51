"""Network preflight for Horovod/MPI jobs: check hosts, choose the interface, write a hostfile."""

__version__ = "0.1.0"
