"""UPnP IGD port mapping through miniupnpc, against a fake router on loopback."""

from __future__ import annotations

import re

import pytest
import trio

from p2pshare.net.upnp import UpnpError, UpnpMapper
from tests.net.fake_igd import EXTERNAL_IP, running_igd


async def test_upnp_maps_and_removes_a_tcp_port() -> None:
    with running_igd() as (url, igd):
        mapper = UpnpMapper(url)
        assert await mapper.external_ip() == EXTERNAL_IP
        assert await mapper.map_tcp(4001, 4001, 3600) == (4001, 3600)
        assert igd.mappings == {4001: ("127.0.0.1", 4001, 3600)}
        await mapper.unmap_tcp(4001, 4001)
        assert igd.mappings == {}
        with pytest.raises(UpnpError, match="NoSuchEntryInArray"):
            await mapper.unmap_tcp(4001, 4001)


async def test_a_router_that_keeps_only_permanent_mappings_gets_one() -> None:
    with running_igd() as (url, igd):
        igd.permanent_only = True
        assert await UpnpMapper(url).map_tcp(4001, 4001, 3600) == (4001, 0)
        assert igd.mappings == {4001: ("127.0.0.1", 4001, 0)}


async def test_a_router_that_never_answers_costs_the_timeout_not_more() -> None:
    """miniupnpc blocks; its worker thread is abandoned at the timeout."""
    with running_igd() as (url, igd):
        mapper = UpnpMapper(url, timeout=0.5)
        assert await mapper.external_ip() == EXTERNAL_IP
        igd.hang.set()
        started = trio.current_time()
        with pytest.raises(UpnpError, match=r"did not map TCP port 4001 within 0\.5 s"):
            await mapper.map_tcp(4001, 4001, 3600)
        assert trio.current_time() - started < 1.5


async def test_no_router_at_the_url_is_a_upnp_error() -> None:
    with running_igd() as (url, _):
        dead = url
    # Said as it is: nothing there, not "the router refused".
    with pytest.raises(UpnpError, match=f"no UPnP router description at {re.escape(dead)}"):
        await UpnpMapper(dead).external_ip()
