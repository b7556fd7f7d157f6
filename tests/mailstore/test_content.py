"""Transfer-encoding decoding and preview text (mailstore/content.py), byte for byte."""

from __future__ import annotations

import base64

import pytest

from provider.mailstore.content import (
    UnknownTransferEncoding,
    decode_base64,
    decode_transfer_encoding,
    first_text_part,
    html_to_text,
)
from provider.mailstore.message import parse_message


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"aGVsbG8gd29ybGQ=", b"hello world"),
        (b"aGVs\r\nbG8g\r\nd29y\r\nbGQ=\r\n", b"hello world"),
        (b"aGVs!!bG8*gd29y bGQ", b"hello world"),  # garbage outside the alphabet skipped
        (b"aGVsbG8", b"hello"),  # missing padding
        (b"aGVsbG8=trailing", b"hello"),  # nothing after the first "="
        (b"a", b""),  # a lone character holds no whole octet
        (b"", b""),
        (b"\x00\xff\r\n====", b""),
        (base64.b64encode(bytes(range(256))), bytes(range(256))),
    ],
)
def test_base64_is_decoded_leniently(encoded, decoded):
    assert decode_base64(encoded) == decoded
    assert decode_transfer_encoding(encoded, "BASE64") == decoded


def test_other_encodings():
    assert decode_transfer_encoding(b"a=3Db=\r\nc =ZZ", "Quoted-Printable") == b"a=bc =ZZ"
    for identity in ("7bit", "8BIT", "binary", ""):
        assert decode_transfer_encoding(b"\x00x\n", identity) == b"\x00x\n"
    for unknown in ("x-uuencode", "gzip", "base64x"):
        with pytest.raises(UnknownTransferEncoding):
            decode_transfer_encoding(b"x", unknown)


def test_big_garbage_base64_is_linear():
    garbage = b"!@#$%^&*" * 500_000 + b"aGk="
    assert decode_base64(garbage) == b"hi"


def test_html_to_text_keeps_only_what_a_reader_sees():
    assert html_to_text("<p>a</p><p>b</p>").split() == ["a", "b"]
    assert html_to_text("<style>x</style><script>y</script>z &lt;3 &#x263A;") == "z <3 \u263a"
    assert html_to_text("<b>unclosed <i>tags <").startswith("unclosed tags")
    assert html_to_text("<" * 10_000 + "x") == "<" * 10_000 + "x"  # stray "<" is text


def test_first_text_part_skips_attachments_and_attached_messages():
    message = parse_message(
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner text\r\n"
        b"--b\r\nContent-Type: image/png\r\n\r\nPNG\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>outer</p>\r\n--b--\r\n"
    )
    found = first_text_part(message.body)
    assert found is not None and found.subtype == "html"
