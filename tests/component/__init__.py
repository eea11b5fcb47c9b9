"""In-process services with fakes: the manager with fake nodes, the worker with the fake
runtime, the stores' contract suites, supervision, pulls, the API over ASGI."""
