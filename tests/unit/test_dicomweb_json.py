"""Tests of the DICOM JSON built for QIDO-RS results and WADO-RS metadata."""

from __future__ import annotations

from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import ReturnKey
from dicomvault.index.search import SearchResult
from dicomvault.web.dicomweb.dicom_json import (
    element_from_strings,
    instance_metadata,
    person_name_json,
    resolve_bulk_data,
    search_result_json,
)

INSTANCE_URL = "http://127.0.0.1:8080/dicomweb/studies/1/series/2/instances/3"


class TestElementFromStrings:
    def test_person_name_groups(self) -> None:
        assert element_from_strings("PN", ["Yamada^Tarou=山田^太郎=やまだ^たろう"]) == {
            "vr": "PN",
            "Value": [
                {
                    "Alphabetic": "Yamada^Tarou",
                    "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう",
                }
            ],
        }

    def test_person_name_without_ideographic(self) -> None:
        assert person_name_json("Doe^John==DO^JON") == {
            "Alphabetic": "Doe^John",
            "Phonetic": "DO^JON",
        }

    def test_integer_string_is_number(self) -> None:
        assert element_from_strings("IS", [" 12"]) == {"vr": "IS", "Value": [12]}

    def test_decimal_string_is_number(self) -> None:
        assert element_from_strings("DS", ["1.5", "2"]) == {"vr": "DS", "Value": [1.5, 2.0]}

    def test_invalid_number_left_out(self) -> None:
        assert element_from_strings("IS", ["twelve"]) == {"vr": "IS"}

    def test_empty_value_has_no_value(self) -> None:
        assert element_from_strings("LO", [""]) == {"vr": "LO"}
        assert element_from_strings("LO", []) == {"vr": "LO"}

    def test_empty_item_of_many_is_null(self) -> None:
        assert element_from_strings("CS", ["A", "", "B"]) == {"vr": "CS", "Value": ["A", None, "B"]}


class TestSearchResult:
    def result(self) -> SearchResult:
        return SearchResult(
            level=Level.IMAGE,
            record={
                "StudyInstanceUID": ["1"],
                "SeriesInstanceUID": ["2"],
                "SOPInstanceUID": ["3"],
                "PatientName": ["Doe^John"],
                "InstanceNumber": ["7"],
                "AccessionNumber": [],
            },
            elements={0x00280010: {"vr": "US", "Value": [512]}},
            pks={Level.IMAGE: 1},
            storage_key="ab/cd/x.dcm",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )

    def test_return_keys_in_tag_order(self) -> None:
        keys = [
            ReturnKey(0x00280010, "Rows", "US"),
            ReturnKey(0x00100010, "PatientName", "PN"),
            ReturnKey(0x00200013, "InstanceNumber", "IS"),
            ReturnKey(0x00080050, "AccessionNumber", "SH"),
            ReturnKey(0x00080056, "InstanceAvailability", "CS"),
        ]
        obj = search_result_json(self.result(), keys, INSTANCE_URL, INSTANCE_URL)
        assert list(obj) == sorted(obj)
        assert obj["00280010"] == {"vr": "US", "Value": [512]}
        assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
        assert obj["00200013"] == {"vr": "IS", "Value": [7]}
        assert obj["00080050"] == {"vr": "SH"}
        assert obj["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
        assert obj["00081190"] == {"vr": "UR", "Value": [INSTANCE_URL]}
        assert obj["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}

    def test_header_attributes_included(self) -> None:
        extra = {"00180015": {"vr": "CS", "Value": ["HEAD"]}}
        obj = search_result_json(self.result(), [], INSTANCE_URL, INSTANCE_URL, extra)
        assert obj["00180015"] == {"vr": "CS", "Value": ["HEAD"]}


class TestBulkData:
    def test_relative_uri_made_absolute(self) -> None:
        header = {
            "00420011": {"vr": "OB", "BulkDataURI": "bulkdata/00420011"},
            "00400275": {
                "vr": "SQ",
                "Value": [{"00091010": {"vr": "OB", "BulkDataURI": "bulkdata/00091010"}}],
            },
        }
        resolved = resolve_bulk_data(header, INSTANCE_URL)
        assert resolved["00420011"]["BulkDataURI"] == f"{INSTANCE_URL}/bulkdata/00420011"
        item = resolved["00400275"]["Value"][0]
        assert item["00091010"]["BulkDataURI"] == f"{INSTANCE_URL}/bulkdata/00091010"
        assert header["00420011"]["BulkDataURI"] == "bulkdata/00420011"

    def test_without_url_binary_left_out(self) -> None:
        header = {"00420011": {"vr": "OB", "BulkDataURI": "bulkdata/00420011"}}
        assert resolve_bulk_data(header, None) == {}


class TestInstanceMetadata:
    def test_pixel_data_uri_for_native_16_bit(self) -> None:
        header = {"00280010": {"vr": "US", "Value": [4]}, "00280100": {"vr": "US", "Value": [16]}}
        obj = instance_metadata(header, INSTANCE_URL, "1.2.840.10008.1.2.1")
        assert obj["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{INSTANCE_URL}/bulkdata/7FE00010"}
        assert obj["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}

    def test_pixel_data_uri_for_compressed(self) -> None:
        header = {"00280010": {"vr": "US", "Value": [4]}, "00280100": {"vr": "US", "Value": [16]}}
        obj = instance_metadata(header, INSTANCE_URL, "1.2.840.10008.1.2.4.90")
        assert obj["7FE00010"]["vr"] == "OB"

    def test_no_pixel_data_without_rows(self) -> None:
        obj = instance_metadata({"00080016": {"vr": "UI", "Value": ["1.2"]}}, INSTANCE_URL, "1.2")
        assert "7FE00010" not in obj
