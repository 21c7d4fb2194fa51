"""One module per family of checks; each check is a small function from facts to CheckResults.

Families and their modules: ssh, resolve, interface, software, resources, clock (this package,
pure functions on probe facts) and mesh, mtu, mpi (active tests between hosts). Every id is
listed with its meaning in its module's docstring.
"""
