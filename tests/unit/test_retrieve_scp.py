"""Pure parts of the retrieve SCP: contexts to propose, final statuses, conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dicomvault.dimse.retrieve_scp import (
    DECODING_PLUGINS,
    ConversionError,
    InstanceToSend,
    SubOperationCounts,
    _final_status,
    convert_for,
    decompressed,
    proposed_contexts,
)
from tests.support.corpus import PYDICOM_TEST_FILES

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def instance(sop_class: str, syntax: str, number: int = 1) -> InstanceToSend:
    return InstanceToSend(f"1.2.3.{number}", sop_class, syntax, "ab/cd/x.dcm")


class TestProposedContexts:
    def test_stored_syntax_and_uncompressed(self) -> None:
        contexts = list(
            proposed_contexts(
                [
                    instance(CT, JPEG2000, 1),
                    instance(CT, ExplicitVRLittleEndian, 2),
                    instance(MR, ExplicitVRBigEndian, 3),
                ]
            )
        )

        assert contexts == [
            (CT, [JPEG2000]),
            (CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
            (MR, [ExplicitVRBigEndian]),
            (MR, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        ]

    def test_limited_to_128(self) -> None:
        items = [instance(f"1.2.3.4.{n}", RLELossless, n) for n in range(100)]

        assert len(list(proposed_contexts(items))) == 128


class TestFinalStatus:
    @pytest.mark.parametrize(
        ("completed", "failed", "warning", "status"),
        [
            (3, 0, 0, 0x0000),
            (2, 1, 0, 0xB000),
            (2, 0, 1, 0xB000),
            (0, 3, 0, 0xA702),
            (0, 2, 1, 0xB000),
            (0, 0, 0, 0x0000),
        ],
        ids=[
            "all-completed",
            "some-failed",
            "some-warnings",
            "all-failed",
            "failed-and-warning",
            "nothing-matched",
        ],
    )
    def test_status(self, completed: int, failed: int, warning: int, status: int) -> None:
        counts = SubOperationCounts(0, completed, failed, warning)
        assert _final_status(counts) == status


class TestConvertFor:
    def test_jpeg2000_decoded(self) -> None:
        path = PYDICOM_TEST_FILES / "JPEG2000.dcm"
        converted, context_id = convert_for(path, {ExplicitVRLittleEndian: 3})
        original = pydicom.dcmread(path)

        assert context_id == 3
        assert converted.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert converted.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(converted.pixel_array, original.pixel_array)

    def test_big_endian_to_implicit(self) -> None:
        path = PYDICOM_TEST_FILES / "MR_small_bigendian.dcm"
        converted, context_id = convert_for(path, {JPEG2000: 1, ImplicitVRLittleEndian: 5})

        assert context_id == 5
        assert converted.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert np.array_equal(converted.pixel_array, pydicom.dcmread(path).pixel_array)

    def test_no_uncompressed_accepted(self, tmp_path: Path) -> None:
        with pytest.raises(ConversionError) as excinfo:
            convert_for(PYDICOM_TEST_FILES / "CT_small.dcm", {JPEG2000: 1})
        assert str(excinfo.value) == (
            f"the peer accepts only {JPEG2000}, and the archive converts only to "
            "uncompressed transfer syntaxes"
        )


class TestDecompressed:
    @pytest.mark.parametrize(
        "name",
        ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"],
    )
    def test_each_plugin_decodes_bundled_files(self, name: str) -> None:
        # pylibjpeg goes first and python-gdcm is the fallback, so both must
        # decode lossless files to the same pixels.
        path = PYDICOM_TEST_FILES / name
        reference = pydicom.dcmread(path).pixel_array
        syntax = pydicom.dcmread(path).file_meta.TransferSyntaxUID
        available = set(get_decoder(syntax).available_plugins)
        assert "gdcm" in available or syntax == RLELossless

        for plugin in sorted(available & set(DECODING_PLUGINS)):
            ds = pydicom.dcmread(path)
            ds.decompress(decoding_plugin=plugin, generate_instance_uid=False)
            assert np.array_equal(ds.pixel_array, reference), plugin
        assert np.array_equal(decompressed(path, pydicom.dcmread(path)).pixel_array, reference)

    def test_undecodable_file_names_every_decoder(self) -> None:
        path = PYDICOM_TEST_FILES / "JPEG2000-embedded-sequence-delimiter.dcm"

        with pytest.raises(ConversionError) as excinfo:
            decompressed(path, pydicom.dcmread(path))

        message = str(excinfo.value)
        assert message.startswith("decoding JPEG 2000 Image Compression failed (pylibjpeg: ")
        assert "; gdcm: " in message

    def test_syntax_without_decoder(self) -> None:
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.110"  # JPEG XL Lossless

        with pytest.raises(ConversionError, match="no installed decoder supports"):
            decompressed(PYDICOM_TEST_FILES / "CT_small.dcm", ds)
