"""A UPnP Internet Gateway Device for tests: the root description and the three
WANIPConnection actions miniupnpc sends, over HTTP on loopback, served by a thread;
``hang`` makes it accept connections and never answer."""

from __future__ import annotations

import http.server
import re
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
EXTERNAL_IP = "203.0.113.8"
_DESC = f"""<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><deviceList><device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><serviceList><service>
<serviceType>{SERVICE}</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl</controlURL><eventSubURL>/evt</eventSubURL><SCPDURL>/scpd.xml</SCPDURL>
</service></serviceList></device></deviceList></device></deviceList></device></root>"""


class FakeIgd:
    def __init__(self) -> None:
        self.mappings: dict[int, tuple[str, int, int]] = {}  # external -> client, internal, lease
        self.hang = threading.Event()
        self.release = threading.Event()
        self.permanent_only = False

    def act(self, action: str, body: str) -> tuple[int, str]:
        def arg(name: str) -> str:
            found = re.search(rf"<{name}>([^<]*)</{name}>", body)
            return found.group(1) if found else ""

        if action == "GetExternalIPAddress":
            answer = f"<NewExternalIPAddress>{EXTERNAL_IP}</NewExternalIPAddress>"
        elif action == "AddPortMapping":
            lease = int(arg("NewLeaseDuration") or 0)
            if self.permanent_only and lease:
                return 500, _fault(725, "OnlyPermanentLeasesSupported")
            external = int(arg("NewExternalPort"))
            internal = int(arg("NewInternalPort"))
            self.mappings[external] = (arg("NewInternalClient"), internal, lease)
            answer = ""
        elif action == "DeletePortMapping":
            if self.mappings.pop(int(arg("NewExternalPort")), None) is None:
                return 500, _fault(714, "NoSuchEntryInArray")
            answer = ""
        else:
            return 500, _fault(401, "Invalid Action")
        return 200, _envelope(
            f'<u:{action}Response xmlns:u="{SERVICE}">{answer}</u:{action}Response>'
        )


def _envelope(body: str) -> str:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )


def _fault(code: int, text: str) -> str:
    return _envelope(
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
        f'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode>'
        f"<errorDescription>{text}</errorDescription></UPnPError></detail></s:Fault>"
    )


@contextmanager
def running_igd() -> Iterator[tuple[str, FakeIgd]]:
    """A FakeIgd on 127.0.0.1; yields its root description URL."""
    igd = FakeIgd()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: str) -> None:
            if igd.hang.is_set():
                igd.release.wait(30)
                return
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, _DESC)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            action = self.headers.get("SOAPAction", "").strip('"').rsplit("#", 1)[-1]
            self._send(*igd.act(action, body))

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rootDesc.xml", igd
    finally:
        igd.release.set()
        server.shutdown()
        server.server_close()
