"""Forwarded client addresses: believed from trusted proxies only, whatever a client writes."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge_actors import Settings
from bridge_actors._errors import InvalidSettings
from bridge_actors._server.forwarded import client_address, parse_networks

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
header_text = st.text(alphabet=st.characters(codec="latin-1"), max_size=80)


def test_a_trusted_proxy_vouches_for_the_address_to_its_left():
    assert client_address("127.0.0.1", ["1.2.3.4"], None, PROXIES) == "1.2.3.4"
    # Through two proxies of ours: the client is the rightmost untrusted hop.
    assert client_address("127.0.0.1", ["1.2.3.4, 10.1.2.3"], None, PROXIES) == "1.2.3.4"
    # Whatever the client itself wrote to the left of that is not believed.
    assert client_address("127.0.0.1", ["6.6.6.6, 1.2.3.4"], None, PROXIES) == "1.2.3.4"
    assert client_address("127.0.0.1", ["6.6.6.6", "1.2.3.4"], None, PROXIES) == "1.2.3.4"
    assert client_address("::1", ["[2001:db8::1]:443"], None, PROXIES) == "2001:db8::1"


def test_x_real_ip_is_the_proxys_word_over_a_forwarded_for_it_passed_through():
    assert client_address("127.0.0.1", [], "5.6.7.8", PROXIES) == "5.6.7.8"
    # A proxy that sets only X-Real-IP passes the client's own X-Forwarded-For along.
    assert client_address("127.0.0.1", ["6.6.6.6"], "5.6.7.8", PROXIES) == "5.6.7.8"
    # X-Real-IP naming another proxy of ours: the chain says who is behind it.
    assert client_address("127.0.0.1", ["1.2.3.4, 10.0.0.2"], "10.0.0.2", PROXIES) == "1.2.3.4"
    assert client_address("127.0.0.1", [], "not an address", PROXIES) == "127.0.0.1"


def test_a_malformed_hop_ends_the_walk_at_the_last_address_vouched_for():
    assert client_address("127.0.0.1", ["1.2.3.4, garbage"], None, PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", ["garbage, 10.0.0.9"], None, PROXIES) == "10.0.0.9"


@given(peer=addresses, forwarded=st.lists(header_text, max_size=3), real_ip=header_text)
def test_anyone_but_a_trusted_proxy_is_counted_under_its_own_address(peer, forwarded, real_ip):
    if any(ipaddress.ip_address(peer) in network for network in PROXIES):
        return
    assert client_address(peer, forwarded, real_ip, PROXIES) == peer
    assert client_address(peer, forwarded, real_ip, ()) == peer


@given(forwarded=st.lists(header_text, max_size=3), real_ip=st.none() | header_text)
def test_whatever_a_proxy_passes_on_the_answer_is_an_address(forwarded, real_ip):
    answer = client_address("127.0.0.1", forwarded, real_ip, PROXIES)
    ipaddress.ip_address(answer)  # never raises: the peer, or an address parsed from a hop


def test_the_setting_takes_addresses_and_networks_and_names_a_bad_one(tmp_path):
    settings = Settings(state_dir=tmp_path, trusted_proxies="127.0.0.1, 10.0.0.0/8")
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    with pytest.raises(InvalidSettings, match=re.escape("'10.0.0.300' is not an IP address")):
        Settings(state_dir=tmp_path, trusted_proxies="127.0.0.1,10.0.0.300")
