"""Process runtime: the command line, `up` (the whole stack on one machine), worker processes,
embedded data stores and Envoy."""
