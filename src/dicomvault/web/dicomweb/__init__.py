"""DICOMweb services of the archive: QIDO-RS, WADO-RS and WADO-URI over HTTP (PS3.18)."""
