"""Running fedsim's ServerApp and ClientApp under Flower's Deployment Runtime (SuperLink + SuperNodes).

`certs` makes the TLS and SuperNode-authentication material, `processes` starts and reliably stops the Flower
processes, `local_federation` puts a whole federation on loopback for `fedsim deploy local`.
"""
