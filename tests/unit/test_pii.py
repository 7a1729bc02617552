"""PII scrubbing: exact outputs and counts, and the numbers that must be left alone."""

from __future__ import annotations

import pytest

from lm_tasks.data.pii import PLACEHOLDERS, scrub_pii


def test_placeholders():
    assert PLACEHOLDERS == {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>"}


def test_a_text_with_every_kind():
    text = ("Write to first.last+tag@mail.example.co.uk or bob@example.org, call +44 20 7946 0958 "
            "or (202) 555-0143, and do not ping 192.168.0.1 or 2001:db8::1 after 12:30 on 2021-03-04.")
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == ("Write to <EMAIL> or <EMAIL>, call <PHONE> "
                        "or <PHONE>, and do not ping <IP_ADDRESS> or <IP_ADDRESS> after 12:30 on 2021-03-04.")
    assert counts == {"email": 2, "phone": 2, "ip": 2}


@pytest.mark.parametrize("address", [
    "first.last+tag@mail.example.co.uk",
    "a@b.co",
    "user_name%x@sub-domain.example.com",
    "UPPER.Case@Example.COM",
])
def test_emails(address):
    assert scrub_pii(f"Mail {address}.", ("email",)) == ("Mail <EMAIL>.", {"email": 1})


@pytest.mark.parametrize("text", ["x@localhost", "@handle", "a.@b.com", "name@domain", "user@example.c0m"])
def test_not_emails(text):
    assert scrub_pii(text, ("email",)) == (text, {"email": 0})


@pytest.mark.parametrize("number", [
    "+44 20 7946 0958",
    "+1-202-555-0143",
    "+49 (0)30 1234567",
    "+4930123456",
    "(202) 555-0143",
    "202-555-0143",
    "1-800-555-0199",
    "202.555.0143",
    "030 12345678",
    "030/1234 5678",
    "06 12 34 56 78",
    "06.12.34.56.78",
    "020-7946-0958",
])
def test_phone_numbers(number):
    assert scrub_pii(f"Call {number}, please.", ("phone",)) == ("Call <PHONE>, please.", {"phone": 1})


@pytest.mark.parametrize("text", [
    "in 1998",
    "(1998)",
    "on 2021-03-04",
    "on 04/05/2021",
    "on 01.02.2021 at noon",
    "on 12.03.2021 15 people came",
    "2021/05/06",
    "20210304",
    "version 3.11.2",
    "pi is 3.14159",
    "42",
    "12345",
    "at 12:30",
    "10:30:45",
    "192.168.0.1",
    "v1.2.3.4",
    "1,234,567",
    "$1,299.99",
    "+5 points",
    "+3.14",
    "+000000120",
    "0.5 1234",
    "page 12-13",
    "555-0143",
    "202 555 0143",
    "0301234567",
    "4111 1111 1111 1111",
    "ISBN 978-3-16-148410-0",
    "ISBN 0-306-40615-2",
    "1.5e-10",
    "00:1a:2b:3c:4d:5e",
])
def test_not_phone_numbers(text):
    assert scrub_pii(text, ("phone",)) == (text, {"phone": 0})


@pytest.mark.parametrize("text,scrubbed", [
    ("server 10.0.0.1.", "server <IP_ADDRESS>."),
    ("255.255.255.0", "<IP_ADDRESS>"),
    ("me@192.168.0.1", "me@<IP_ADDRESS>"),
    ("2001:db8::1", "<IP_ADDRESS>"),
    ("2001:0db8:0000:0000:0000:ff00:0042:8329", "<IP_ADDRESS>"),
    ("[2001:db8::ff00:42:8329]:80", "[<IP_ADDRESS>]:80"),
    ("fe80::1%eth0", "<IP_ADDRESS>%eth0"),
    ("::ffff:192.0.2.1", "::ffff:<IP_ADDRESS>"),
])
def test_ip_addresses(text, scrubbed):
    assert scrub_pii(text, ("ip",)) == (scrubbed, {"ip": 1})


@pytest.mark.parametrize("text", [
    "256.1.1.1", "1.2.3.4.5", "01.02.03.04", "version 3.11.2", "12:30", "::1", "x = a[1::2]",
    "std::vector", "2001:db8::1::2", "1:2:3:4:5:6:7:8",
])
def test_not_ip_addresses(text):
    assert scrub_pii(text, ("ip",)) == (text, {"ip": 0})


def test_an_ip_address_is_never_scrubbed_as_a_phone_number():
    assert scrub_pii("Host 203.0.113.195 answered.") == (
        "Host <IP_ADDRESS> answered.", {"email": 0, "phone": 0, "ip": 1})
    assert scrub_pii("Host 203.0.113.195 answered.", ("phone",))[1] == {"phone": 0}


def test_only_the_kinds_asked_for_are_scrubbed():
    text = "bob@example.org 10.0.0.1 202-555-0143"
    assert scrub_pii(text, ("phone",)) == ("bob@example.org 10.0.0.1 <PHONE>", {"phone": 1})
    assert scrub_pii(text, ()) == (text, {})
    with pytest.raises(ValueError, match=r"'address'.*email, phone, ip"):
        scrub_pii(text, ("address",))
