"""Tests of Accept header parsing and transfer syntax choice for WADO-RS."""

from __future__ import annotations

import pytest

from dicomvault.web.dicomweb.media import (
    DICOM,
    OCTET_STREAM,
    Acceptable,
    MediaTypeError,
    NotAcceptableError,
    choose_instance_syntax,
    multipart_acceptables,
    parse_accept,
    single_acceptables,
)

EXPLICIT = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
CONVERTIBLE = (EXPLICIT, "1.2.840.10008.1.2", "1.2.840.10008.1.2.5")


class TestParseAccept:
    def test_missing_header_is_anything(self) -> None:
        assert [r.media_type for r in parse_accept(None)] == ["*/*"]

    def test_quoted_parameters_and_quality_order(self) -> None:
        ranges = parse_accept(
            'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        )
        assert [r.parameters["transfer-syntax"] for r in ranges] == [EXPLICIT, "*"]
        assert ranges[0].parameters["type"] == DICOM

    def test_comma_inside_quotes(self) -> None:
        (media_range,) = parse_accept('multipart/related; type="a,b/c"')
        assert media_range.parameters["type"] == "a,b/c"

    def test_quality_zero_dropped(self) -> None:
        assert parse_accept("image/png;q=0") == []

    @pytest.mark.parametrize(
        ("header", "message"),
        [
            ("nonsense", "Invalid media type 'nonsense'"),
            ("image/png; q=high", "Invalid quality value q=high"),
            ("image/png; q=2", "it must be from 0 to 1"),
            ("image/png; broken", "Invalid parameter 'broken'"),
        ],
    )
    def test_malformed(self, header: str, message: str) -> None:
        with pytest.raises(MediaTypeError, match=message):
            parse_accept(header)


class TestAcceptables:
    def test_default_for_any(self) -> None:
        acceptables = multipart_acceptables(parse_accept("*/*"), (DICOM,), DICOM)
        assert acceptables == [Acceptable(DICOM, "")]

    def test_single_part_type_not_acceptable(self) -> None:
        assert multipart_acceptables(parse_accept(DICOM), (DICOM,), DICOM) == []

    def test_unsupported_part_type_skipped(self) -> None:
        header = f'multipart/related; type="image/gif", multipart/related; type="{OCTET_STREAM}"'
        acceptables = multipart_acceptables(parse_accept(header), (OCTET_STREAM,), OCTET_STREAM)
        assert acceptables == [Acceptable(OCTET_STREAM, "")]

    def test_invalid_transfer_syntax(self) -> None:
        with pytest.raises(MediaTypeError, match="Invalid transfer-syntax 'jpeg'"):
            multipart_acceptables(
                parse_accept('multipart/related; type="application/dicom"; transfer-syntax=jpeg'),
                (DICOM,),
                DICOM,
            )

    def test_single_acceptables_wildcards(self) -> None:
        supported = ("image/jpeg", "image/png")
        assert single_acceptables(parse_accept("image/*"), supported) == ["image/jpeg"]
        assert single_acceptables(parse_accept("image/png, */*"), supported) == [
            "image/png",
            "image/jpeg",
        ]
        assert single_acceptables(parse_accept("text/html"), supported) == []


class TestChooseInstanceSyntax:
    def test_any_is_as_stored(self) -> None:
        assert choose_instance_syntax([Acceptable(DICOM, "*")], J2K, CONVERTIBLE, True) == "*"

    def test_stored_syntax_requested(self) -> None:
        assert choose_instance_syntax([Acceptable(DICOM, J2K)], J2K, CONVERTIBLE, True) == "*"

    def test_default_is_explicit_little_endian(self) -> None:
        assert choose_instance_syntax([Acceptable(DICOM, "")], J2K, CONVERTIBLE, True) == EXPLICIT

    def test_first_producible_wins(self) -> None:
        acceptables = [Acceptable(DICOM, "1.2.840.10008.1.2.4.50"), Acceptable(DICOM, EXPLICIT)]
        assert choose_instance_syntax(acceptables, J2K, CONVERTIBLE, True) == EXPLICIT

    def test_undecodable_source(self) -> None:
        with pytest.raises(NotAcceptableError, match="cannot be converted"):
            choose_instance_syntax([Acceptable(DICOM, EXPLICIT)], J2K, CONVERTIBLE, False)
