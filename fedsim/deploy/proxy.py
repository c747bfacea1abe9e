"""The TLS proxy in front of the SuperLink: client machines reach the Fleet API and nothing else.

Flower 1.41's SuperLink serves the Fleet API (SuperNodes), the Control API (`flwr`: register nodes, list and submit
runs, which makes code run on the server and on every node) and its Runtime API on one HTTPS port, and open-source
Flower has no user authentication on the Control API: whoever reaches that port with the CA certificate controls
the federation. So the SuperLink listens on the server's loopback only (the operator's `flwr` and the ServerApp
talk to it there), and nginx listens where client machines connect. nginx

- requires a TLS client certificate signed by the federation's CA and not listed in its `crl.pem` (a machine with
  only `ca.crt` gets no further than the handshake);
- passes on only requests for `/v1/fleet/<method>` (the normalised path: `..` and percent tricks are resolved
  before the match, and the SuperLink receives the normalised path) and answers everything else with 403;
- talks to the SuperLink over TLS, checking its certificate against the CA.

SuperNode authentication (`--enable-supernode-auth`: a node must sign every request with a key the operator
registered) still applies behind it: the proxy decides who may talk to the SuperLink at all, the SuperLink which
registered node is talking.

Being the one door, nginx also sees every byte the nodes exchange with the server: the standalone proxy logs each
Fleet request (`ACCESS_LOG` in its folder, one tab-separated line of `ACCESS_LOG_FIELDS`, as nginx measured them),
which `fedsim.deploy.wire_log` reads to check the bytes a run counted against what crossed the wire.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeployError
from .certs import Credentials

NGINX = "nginx"
FLEET_LOCATION = r"^/v1/fleet/[a-z-]+$"
MAX_BODY = "1g"  # a model update crosses in one request per array; ResNets and larger need room
ACCESS_LOG = "fleet-access.log"
# nginx variables, in the order of the access log's tab-separated columns: when, which client certificate, the
# normalised path, the HTTP status, the request's body (Content-Length) and whole size, the response's body and
# whole size (headers included), and the seconds the request took
ACCESS_LOG_FIELDS = ("msec", "ssl_client_s_dn", "uri", "status", "content_length", "request_length",
                     "body_bytes_sent", "bytes_sent", "request_time")


class ProxyError(DeployError):
    """nginx is missing, or refused its configuration."""


@dataclass(frozen=True)
class ProxySettings:
    """Where the proxy listens, where the SuperLink is, and the federation's certificates."""

    listen_host: str
    listen_port: int
    superlink_port: int
    credentials: Credentials

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


def server_block(settings: ProxySettings, access_log: Path | None = None) -> str:
    """nginx `upstream` and `server` blocks (http context): what an operator's own nginx can include as it is.

    With `access_log`, every Fleet request is logged there in `ACCESS_LOG_FIELDS` (a `log_format` named after the
    SuperLink's port, as the upstream is, so two federations' blocks can share one nginx)."""
    certs = settings.credentials
    upstream = f"fedsim_superlink_{settings.superlink_port}"
    log_format, log_line = "", ""
    if access_log is not None:
        name = f"fedsim_fleet_{settings.superlink_port}"
        columns = "\\t".join(f"${field}" for field in ACCESS_LOG_FIELDS)
        log_format = f"log_format {name} escape=default \"{columns}\";\n"
        log_line = f"\n        access_log {access_log.resolve()} {name};"
    return f"""\
# fedsim: client machines reach only the SuperLink's Fleet API, and only with a client certificate from the CA.
{log_format}upstream {upstream} {{
    server 127.0.0.1:{settings.superlink_port};
    keepalive 32;
}}
server {{
    listen {settings.listen} ssl;
    ssl_certificate {certs.server_cert.resolve()};
    ssl_certificate_key {certs.server_key.resolve()};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_client_certificate {certs.ca_cert.resolve()};
    ssl_verify_client on;
    ssl_verify_depth 1;
    ssl_crl {certs.crl.resolve()};
    client_max_body_size {MAX_BODY};
    proxy_request_buffering off;
    proxy_buffering off;
    location ~ {FLEET_LOCATION} {{
        proxy_pass https://{upstream}$uri;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host localhost;
        proxy_ssl_trusted_certificate {certs.ca_cert.resolve()};
        proxy_ssl_verify on;
        proxy_ssl_name localhost;
        proxy_ssl_session_reuse on;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;{log_line}
    }}
    location / {{
        return 403;
    }}
}}
"""


def standalone_config(settings: ProxySettings, folder: Path) -> str:
    """A whole nginx.conf that runs the proxy in the foreground with its files in `folder` (no /etc, no root)."""
    temp = {name: folder / "temp" / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    user = f"user nobody {_nobody_group()};\n" if os.geteuid() == 0 else ""  # as root, workers drop to nobody
    paths = "\n".join(f"    {name}_temp_path {path};" for name, path in temp.items())
    block = "\n".join(f"    {line}" if line else line
                      for line in server_block(settings, folder / ACCESS_LOG).splitlines())
    return f"""\
{user}worker_processes 1;
daemon off;
pid {folder / 'nginx.pid'};
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{paths}
{block}
}}
"""


def _nobody_group() -> str:
    import grp

    for name in ("nogroup", "nobody"):
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


def nginx_binary() -> str:
    """The nginx executable, or a one-line error saying how to install it."""
    found = shutil.which(NGINX) or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()),
                                        None)
    if found is None:
        raise ProxyError("the proxy needs nginx, which is not installed: `sudo apt-get install nginx` (Debian/Ubuntu), "
                         "or run a trusted network only with --insecure")
    return found


def write_standalone_config(settings: ProxySettings, folder: Path) -> Path:
    """Write `folder/nginx.conf` (and its temp folders); returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "temp").mkdir(exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(standalone_config(settings, folder))
    return config


def nginx_command(config: Path) -> list[str]:
    """Run nginx in the foreground on `config`, logging to stderr (no /var/log needed)."""
    return [nginx_binary(), "-e", "stderr", "-p", str(config.parent), "-c", str(config)]
