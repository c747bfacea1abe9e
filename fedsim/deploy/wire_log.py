"""What crossed the wire in a deployment, read from the proxy's access log: the check of a run's byte counts.

A run counts the bytes of the messages the server sends and the replies it gets (`fedsim.grid.traffic`): each
message's deflated Flower objects. Deployed, nodes move those objects through the proxy one Fleet request each
(Flower 1.41, protobuf over HTTP), and nginx logs every request's body sizes (`fedsim.deploy.proxy.ACCESS_LOG`):

- `push-object` (node to server): a `PushObjectRequest` body, the object's bytes inside an envelope;
- `pull-object` (server to node): a `PullObjectResponse` body, likewise;
- everything else is control traffic: `pull-messages` (polls, and a message's metadata and object tree),
  `push-messages` (a reply's metadata and tree), `send-node-heartbeat`, `confirm-message-received`, `get-run`,
  `get-fab`, node (de)activation.

The envelopes are protobuf fields around `object_content` (field 4 of a push, 3 of a pull), each a tag byte, then a
varint or a length and bytes:
- push: `node` {node_id} (1 + 1 + 1 + varint of the id), `run_id` (1 + varint), `object_id` (1 + 1 + 64 hex
  digits of its SHA-256), `session_id` (1 + 1 + 36, a UUID), and the content's tag and length (1 + varint);
- pull: `object_found` and `object_available` (2 + 2 bytes) and the content's tag and length, so it is exact.
  A body of 0 bytes (not found) or 2 (found, not yet available: the puller retries) holds no object.

Node and run ids are random 64-bit numbers, 1 to 10 varint bytes each, so a push's envelope alone is 112 to 134
bytes. The log tells their size all the same: a node's `pull-object` requests carry the same two ids (node, run id
and object id, nothing else: 70 bytes plus the two varints), so its pushes' envelopes follow from its pulls' sizes,
exactly while the log's lines come from one run (or runs whose ids have varints of the same length).

The SuperLink asks a node to push only the objects it does not hold (ids are content hashes), so an object of a
reply identical to one still stored (another node's, say) does not cross again, while a run counts it in each
reply: uploads on the wire can fall short of a run's `bytes_up` by such duplicates, and exceed it only by a push
retried after its answer was lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .proxy import ACCESS_LOG_FIELDS

FLEET_PREFIX = "/v1/fleet/"
UPLOAD, DOWNLOAD = "push-object", "pull-object"
SHA256_HEX, UUID_TEXT = 64, 36
ID_VARINT = (1, 10)  # bytes of a random uint64's varint (node and run ids), fewest and most
PUSH_FIXED = (1 + 1 + 1) + 1 + (1 + 1 + SHA256_HEX) + (1 + 1 + UUID_TEXT) + 1  # tags, lengths, object and session ids
PULL_FIXED = 2 + 2 + 1  # object_found, object_available, the content's tag
PULL_REQUEST_FIXED = (1 + 1 + 1) + 1 + (1 + 1 + SHA256_HEX)  # a pull-object request, less the ids' varints
PULL_EMPTY = 2  # the largest body of a pull that carried no object


@dataclass(frozen=True)
class FleetRequest:
    """One line of the access log: a Fleet call and its sizes as nginx measured them (bodies and whole messages)."""

    time: float
    client: str  # the client certificate's subject, e.g. "CN=node-0,O=fedsim"
    method: str  # the path's last part, e.g. "push-object"
    status: int
    request_body: int
    request_total: int
    response_body: int
    response_total: int


@dataclass(frozen=True)
class MethodTotals:
    """One Fleet method's requests and the bytes of their bodies."""

    requests: int
    request_bytes: int
    response_bytes: int


@dataclass(frozen=True)
class ObjectTraffic:
    """The bodies that carried objects one way, and the objects' own bytes within them (`least` to `most`: a push's
    envelope depends on the node's and the run's ids, which the log does not show)."""

    requests: int
    wire: int
    least: int
    most: int


def _number(text: str) -> int:
    return 0 if text == "-" else int(text)


def parse_line(line: str) -> FleetRequest | None:
    """One access-log line as a request; None for a line that is not a Fleet call (or not the proxy's format)."""
    columns = line.rstrip("\n").split("\t")
    if len(columns) != len(ACCESS_LOG_FIELDS):
        return None
    row = dict(zip(ACCESS_LOG_FIELDS, columns, strict=True))
    if not row["uri"].startswith(FLEET_PREFIX):
        return None
    try:
        return FleetRequest(float(row["msec"]), row["ssl_client_s_dn"], row["uri"][len(FLEET_PREFIX):],
                            int(row["status"]), _number(row["content_length"]), _number(row["request_length"]),
                            _number(row["body_bytes_sent"]), _number(row["bytes_sent"]))
    except ValueError:
        return None


def read_requests(path: Path, offset: int = 0) -> list[FleetRequest]:
    """The Fleet requests logged in `path` from byte `offset` on (the file's size before a run: that run's)."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        text = stream.read().decode("utf-8", errors="replace")
    return [request for line in text.splitlines() if (request := parse_line(line)) is not None]


def method_totals(requests: Iterable[FleetRequest]) -> dict[str, MethodTotals]:
    """Per Fleet method: requests, request-body bytes, response-body bytes (every status)."""
    totals: dict[str, MethodTotals] = {}
    for request in requests:
        seen = totals.get(request.method, MethodTotals(0, 0, 0))
        totals[request.method] = MethodTotals(seen.requests + 1, seen.request_bytes + request.request_body,
                                              seen.response_bytes + request.response_body)
    return dict(sorted(totals.items()))


def varint_size(value: int) -> int:
    """Bytes of `value` as a protobuf varint."""
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _content(body_less_envelope: int) -> int | None:
    """The content length n whose length field fits: n + varint_size(n) == `body_less_envelope`, if any."""
    for length_bytes in range(1, 11):
        content = body_less_envelope - length_bytes
        if content >= 0 and varint_size(content) == length_bytes:
            return content
    return None


def pushed_content(body: int, ids: tuple[int, int] = (2 * ID_VARINT[0], 2 * ID_VARINT[1])) -> tuple[int, int]:
    """The fewest and most bytes of object content a `push-object` request body of `body` bytes can hold, given
    the fewest and most bytes the node's and the run's ids take together (by default, any ids)."""
    fits = [content for both in range(ids[0], ids[1] + 1)
            if (content := _content(body - PUSH_FIXED - both)) is not None]
    if not fits:
        raise ValueError(f"a push-object body of {body} bytes is too small to hold an object")
    return min(fits), max(fits)


def id_bytes(requests: Iterable[FleetRequest]) -> dict[str, tuple[int, int]]:
    """Per client, the fewest and most bytes its node and run ids took together, read off its `pull-object`
    requests (one value while the requests come from one run)."""
    seen: dict[str, tuple[int, int]] = {}
    for request in requests:
        if request.method == DOWNLOAD and request.status == 200:
            ids = request.request_body - PULL_REQUEST_FIXED
            least, most = seen.get(request.client, (ids, ids))
            seen[request.client] = (min(least, ids), max(most, ids))
    return seen


def pulled_content(body: int) -> int:
    """The bytes of object content in a `pull-object` response body of `body` bytes (0: it carried none)."""
    if body <= PULL_EMPTY:
        return 0
    content = _content(body - PULL_FIXED)
    if content is None:
        raise ValueError(f"no pull-object response has a body of {body} bytes")
    return content


def uploaded_objects(requests: Iterable[FleetRequest]) -> ObjectTraffic:
    """The objects nodes pushed: successful `push-object` requests' bodies, and the content within them (exact for
    a node whose pulls in the same lines show its ids' size, bounded otherwise)."""
    requests = list(requests)
    sizes = id_bytes(requests)
    pushes = [request for request in requests if request.method == UPLOAD and request.status == 200]
    any_ids = (2 * ID_VARINT[0], 2 * ID_VARINT[1])
    bounds = [pushed_content(push.request_body, sizes.get(push.client, any_ids)) for push in pushes]
    return ObjectTraffic(len(pushes), sum(push.request_body for push in pushes), sum(low for low, _ in bounds),
                         sum(high for _, high in bounds))


def downloaded_objects(requests: Iterable[FleetRequest]) -> ObjectTraffic:
    """The objects nodes pulled: successful `pull-object` responses that carried one, and their content."""
    bodies = [request.response_body for request in requests
              if request.method == DOWNLOAD and request.status == 200 and request.response_body > PULL_EMPTY]
    content = sum(pulled_content(body) for body in bodies)
    return ObjectTraffic(len(bodies), sum(bodies), content, content)
