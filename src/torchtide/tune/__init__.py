"""`torchtide tune`: search a model's serving config (instances, threads, batching) against a
live server. A client of the server: the server never imports this package."""
