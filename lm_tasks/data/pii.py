"""Replacing e-mail addresses, IP addresses and phone numbers by placeholders.

The kinds are scrubbed in a fixed order, e-mail, then IP, then phone, so that a
placeholder is never scrubbed again and an IP address is never taken for a phone
number. Every pattern refuses to start or end inside a longer token, so a match is
never a piece of a longer number, word or address.

What counts as each kind:

- e-mail: ASCII local part (letters, digits and `. _ % + -`, dots not leading,
  trailing or doubled) @ one or more domain labels and a top-level domain of 2+
  letters, e.g. first.last+tag@mail.example.co.uk.
- IPv4: four dot-separated decimal octets 0-255 without leading zeros (so dates such
  as 01.02.2021 and versions such as 3.11.2 are not addresses; a four-part version
  1.2.3.4 is, unless written v1.2.3.4).
- IPv6: the full eight-group form and the compressed "::" form (valid by
  `ipaddress`) whose first group has four hex digits, as every global, unique-local,
  link-local and multicast address has (2001:db8::1, fd12:3456::7, fe80::1, ff02::1).
  Loopback ::1, the unspecified ::, and Python slices such as a[1::2] are left alone
  (a[1000::2] and hex words like dead::beef are not). In an IPv4-mapped address
  (::ffff:192.0.2.1) only the IPv4 part is replaced.
- phone: international (+ country code, then 8 to 15 digits in all, in groups
  separated by spaces, dots or hyphens, "(0)" allowed: +44 20 7946 0958,
  +1-202-555-0143, +49 (0)30 1234567); North American ((202) 555-0143,
  202-555-0143, 1-800-555-0199, 202.555.0143); and national numbers with a leading
  0 trunk prefix, 9 to 12 digits in at least two groups, one kind of separator after
  the first (030 12345678, 030/1234 5678, 06 12 34 56 78, 020-7946-0958).
  Not phones: years, dates (2021-03-04, 04/05/2021), versions, decimals, times,
  short numbers, IP addresses, digit runs without separators, space-separated North
  American numbers (202 555 0143, which look like lists of numbers), and ISBNs and
  other hyphenated codes (978-3-16-148410-0) unless they have one of the shapes above.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Iterable

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>"}
KINDS = ("email", "phone", "ip")

_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![\w-]|\.[A-Za-z0-9])"
)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")

# Candidates only: `ipaddress` decides (one "::" at most, eight groups at most).
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{4}(?:::?[0-9A-Fa-f]{1,4}){1,7}(?:::)?(?![\w:]|\.\d)"
)

_PHONE = re.compile(
    r"(?<![\w.+/-])(?:"
    # International: +country code (never starting with 0), then groups; the digits
    # are counted afterwards.
    r"\+[1-9]\d{0,2}(?:[ .-]?(?:\(0\)|\d{1,8})){1,6}"
    # North American, with the area code in brackets or one separator used twice.
    r"|\(\d{3}\) ?\d{3}[.-]\d{4}|(?:1-)?\d{3}-\d{3}-\d{4}|(?:1\.)?\d{3}\.\d{3}\.\d{4}"
    # National with a 0 trunk prefix: any first separator, then one kind of separator.
    r"|0\d{1,4}[ ./-]\d{2,8}(?:([ .-])\d{2,8}(?:\1\d{2,8}){0,3})?"
    r")(?![\w/]|[.-]\d)"
)
_NOT_DIGIT = re.compile(r"\D")
# Cheap tests run before the patterns (which try every position of the text and cost
# several times more). Every IPv4 address holds `_IPV4_SHAPE`; every accepted phone
# number holds a digit, one separator and a digit (the North American and national
# shapes), or "+" and a digit (international).
_IPV4_SHAPE = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_DIGIT_SEPARATOR_DIGIT = re.compile(r"\d[ ./-]\d")
_PLUS_DIGIT = re.compile(r"\+[1-9]")


def _is_ipv6(candidate: str) -> bool:
    if "::" not in candidate and candidate.count(":") != 7:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _is_phone(candidate: str) -> bool:
    digits = len(_NOT_DIGIT.sub("", candidate))
    if candidate.startswith("+"):
        return 8 <= digits <= 15
    if candidate.startswith("0"):
        return 9 <= digits <= 12
    return True  # North American: the pattern fixes the shape


def _replace(pattern: re.Pattern, text: str, placeholder: str,
             accept: Callable[[str], bool] | None = None) -> tuple[str, int]:
    """`pattern.subn`, leaving alone the matches that `accept` (if given) rejects."""
    if accept is None:
        return pattern.subn(placeholder, text)
    replaced = 0

    def swap(match: re.Match) -> str:
        nonlocal replaced
        if accept(match.group()):
            replaced += 1
            return placeholder
        return match.group()

    return pattern.sub(swap, text), replaced


def scrub_pii(text: str, kinds: Iterable[str] = KINDS) -> tuple[str, dict[str, int]]:
    """`text` with the PII of the given kinds replaced, and the replacements per kind."""
    kinds = tuple(kinds)
    unknown = [kind for kind in kinds if kind not in PLACEHOLDERS]
    if unknown:
        raise ValueError(f"Unknown PII kind(s) {unknown}; valid kinds: {', '.join(KINDS)}")
    counts = dict.fromkeys(kinds, 0)
    # Cheap substring tests skip the patterns that cannot match, the common case.
    if "email" in kinds and "@" in text:
        text, counts["email"] = _replace(_EMAIL, text, PLACEHOLDERS["email"])
    numbers = ("ip" in kinds or "phone" in kinds) and _DIGIT_SEPARATOR_DIGIT.search(text)
    if "ip" in kinds:
        if numbers and _IPV4_SHAPE.search(text):
            text, counts["ip"] = _replace(_IPV4, text, PLACEHOLDERS["ip"])
        if "::" in text or text.count(":") >= 7:
            text, found = _replace(_IPV6, text, PLACEHOLDERS["ip"], _is_ipv6)
            counts["ip"] += found
    if "phone" in kinds and (numbers or ("+" in text and _PLUS_DIGIT.search(text))):
        text, counts["phone"] = _replace(_PHONE, text, PLACEHOLDERS["phone"], _is_phone)
    return text, counts
