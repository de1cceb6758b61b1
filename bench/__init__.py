"""Benchmarks of dicomvault beside DCMTK storescp and Orthanc; run them with bench/run.sh."""
