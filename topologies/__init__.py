"""faust app modules, one per kestream role (``faust -A topologies.executor worker``)."""
