"""The `sppo` command line: the composition root that spans server admin, worker, engine and client."""
