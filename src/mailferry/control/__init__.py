"""Queue control while the server runs: the operations (service), the local control socket
(server) and its client (client, used by ``mailferry queue`` and ``mailferry status``)."""
