"""A home router's port mapping services, for the NAT routers of bench/natlab.py.

Run inside a router's network namespace (root): it answers NAT-PMP (RFC 6886, the bytes
of p2pshare.proto.natpmp) on UDP 5351 and a minimal UPnP IGD (a root description and
the WANIPConnection actions miniupnpc uses: GetExternalIPAddress, AddPortMapping,
DeletePortMapping) on TCP 5000 of the router's inside address, and turns each TCP
mapping into real iptables rules in that namespace: a DNAT from the external port on
the WAN interface to the client's port, and a FORWARD accept for it. Mappings expire
after their lifetime; all rules are removed when it stops (SIGTERM).

    ip netns exec ROUTER python bench/lab_gateway.py --inside 10.0.1.1 \\
        --external 198.51.100.2 --wan wan

Prints ``ready`` once both services listen, and one line per mapping change.
No SSDP: a client names the root description (``[network] upnp_root_url``,
``http://INSIDE:5000/rootDesc.xml``).
"""

from __future__ import annotations

import argparse
import http.server
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from p2pshare.proto.natpmp import (
    PORT,
    ExternalAddress,
    ExternalAddressRequest,
    Mapping,
    NatPmpMalformedError,
    ResultCode,
    decode_request,
    encode_error,
    encode_response,
)

UPNP_PORT = 5000
MAX_LIFETIME = 3600
FIRST_SPARE_PORT = 20000


@dataclass
class Forward:
    client: str
    internal: int
    expires: float  # time.monotonic(); inf for a permanent (UPnP lease 0) mapping


class Router:
    """The TCP forwards of one router, as iptables rules in its namespace."""

    def __init__(self, wan: str, external_ip: str, *, dry_run: bool = False) -> None:
        self.wan = wan
        self.external_ip = external_ip
        self.dry_run = dry_run
        self.started = time.monotonic()
        self.forwards: dict[int, Forward] = {}
        self.lock = threading.Lock()

    def epoch(self) -> int:
        return int(time.monotonic() - self.started)

    def _iptables(self, action: str, port: int, forward: Forward) -> None:
        target = f"{forward.client}:{forward.internal}"
        rules = [
            [
                *("-t", "nat", action, "PREROUTING", "-i", self.wan, "-p", "tcp"),
                *("--dport", str(port), "-j", "DNAT", "--to-destination", target),
            ],
            [
                *(action, "FORWARD", "-i", self.wan, "-p", "tcp", "-d", forward.client),
                *("--dport", str(forward.internal), "-j", "ACCEPT"),
            ],
        ]
        for rule in rules:
            if not self.dry_run:
                subprocess.run(["iptables", *rule], check=True, capture_output=True, timeout=10)

    def map(self, client: str, internal: int, wanted: int, lifetime: float) -> int:
        """Forward an external port (``wanted`` if free) to ``client:internal``."""
        with self.lock:
            for port, forward in self.forwards.items():
                if (forward.client, forward.internal) == (client, internal):
                    forward.expires = time.monotonic() + lifetime
                    return port
            port = wanted if wanted and wanted not in self.forwards else FIRST_SPARE_PORT
            while port in self.forwards:
                port += 1
            forward = Forward(client, internal, time.monotonic() + lifetime)
            self._iptables("-A", port, forward)
            self.forwards[port] = forward
        print(f"mapped {self.external_ip}:{port} -> {client}:{internal}", flush=True)
        return port

    def unmap(self, port: int, client: str | None = None, internal: int | None = None) -> None:
        with self.lock:
            for external, forward in list(self.forwards.items()):
                if port and external != port:
                    continue
                if client is not None and forward.client != client:
                    continue
                if internal is not None and forward.internal != internal:
                    continue
                self._iptables("-D", external, forward)
                del self.forwards[external]
                print(f"removed {self.external_ip}:{external}", flush=True)

    def expire(self) -> None:
        now = time.monotonic()
        for port, forward in list(self.forwards.items()):
            if forward.expires <= now:
                self.unmap(port)


def serve_natpmp(router: Router, sock: socket.socket) -> None:
    while True:
        data, (client, client_port) = sock.recvfrom(64)
        try:
            request = decode_request(data)
        except NatPmpMalformedError:
            continue
        if isinstance(request, ExternalAddressRequest):
            answer = encode_response(ExternalAddress(router.epoch(), router.external_ip))
        elif request.protocol != "tcp":
            answer = encode_error(1, ResultCode.UNSUPPORTED_OPCODE, router.epoch())
        elif request.lifetime == 0:
            router.unmap(0, client, request.internal_port)
            answer = encode_response(Mapping("tcp", router.epoch(), request.internal_port, 0, 0))
        else:
            lifetime = min(request.lifetime, MAX_LIFETIME)
            port = router.map(client, request.internal_port, request.external_port, lifetime)
            answer = encode_response(
                Mapping("tcp", router.epoch(), request.internal_port, port, lifetime)
            )
        sock.sendto(answer, (client, client_port))


SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
ROOT_DESC = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<friendlyName>p2pshare lab router</friendlyName>
<UDN>uuid:00000000-0000-0000-0000-000000000001</UDN>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<UDN>uuid:00000000-0000-0000-0000-000000000002</UDN>
<deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<UDN>uuid:00000000-0000-0000-0000-000000000003</UDN>
<serviceList><service>
<serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL>
<SCPDURL>/WANIPCn.xml</SCPDURL>
</service></serviceList>
</device></deviceList>
</device></deviceList>
</device>
</root>
"""


def _soap(body: str) -> bytes:
    return (
        '<?xml version="1.0"?>\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
        ' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
        f"{body}</s:Body></s:Envelope>"
    ).encode()


def _fault(code: int, text: str) -> bytes:
    return _soap(
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"
        '<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
        f"<errorCode>{code}</errorCode><errorDescription>{text}</errorDescription>"
        "</UPnPError></detail></s:Fault>"
    )


def _arg(body: str, name: str) -> str:
    found = re.search(rf"<{name}>([^<]*)</{name}>", body)
    return found.group(1) if found else ""


def upnp_action(router: Router, action: str, body: str) -> tuple[int, bytes]:
    """The HTTP status and SOAP answer to one WANIPConnection ``action``."""
    if action == "GetExternalIPAddress":
        answer = f"<NewExternalIPAddress>{router.external_ip}</NewExternalIPAddress>"
    elif action in ("AddPortMapping", "DeletePortMapping"):
        if _arg(body, "NewProtocol").upper() != "TCP":
            return 500, _fault(402, "Invalid Args")
        try:
            external = int(_arg(body, "NewExternalPort"))
            if action == "AddPortMapping":
                internal = int(_arg(body, "NewInternalPort"))
                lease = int(_arg(body, "NewLeaseDuration") or 0)
                lifetime = min(lease, MAX_LIFETIME) if lease else float("inf")
                got = router.map(_arg(body, "NewInternalClient"), internal, external, lifetime)
                if got != external:
                    router.unmap(got)
                    return 500, _fault(718, "ConflictInMappingEntry")
            elif external not in router.forwards:
                return 500, _fault(714, "NoSuchEntryInArray")
            else:
                router.unmap(external)
        except ValueError:
            return 500, _fault(402, "Invalid Args")
        answer = ""
    else:
        return 500, _fault(401, "Invalid Action")
    return 200, _soap(f'<u:{action}Response xmlns:u="{SERVICE}">{answer}</u:{action}Response>')


def igd_handler(router: Router) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", 'text/xml; charset="utf-8"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/rootDesc.xml":
                self._send(200, ROOT_DESC.encode())
            else:
                self._send(404, b"")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            action = self.headers.get("SOAPAction", "").strip('"').rsplit("#", 1)[-1]
            self._send(*upnp_action(router, action, body))

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inside", required=True, help="the router's LAN address")
    parser.add_argument("--external", required=True, help="the router's WAN address")
    parser.add_argument("--wan", default="wan", help="the WAN interface")
    parser.add_argument("--dry-run", action="store_true", help="no iptables rules")
    args = parser.parse_args()
    router = Router(args.wan, args.external, dry_run=args.dry_run)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.inside, PORT))
    http_server = http.server.ThreadingHTTPServer((args.inside, UPNP_PORT), igd_handler(router))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=serve_natpmp, args=(router, udp), daemon=True).start()
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        while not stop.wait(1.0):
            router.expire()
    finally:
        http_server.shutdown()
        router.unmap(0)
        print("stopped; every mapping removed", flush=True)


if __name__ == "__main__":
    main()
