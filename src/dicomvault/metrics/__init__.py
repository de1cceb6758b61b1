"""Prometheus metrics of the server: definitions, event subscribers, HTTP middleware."""

from dicomvault.metrics.definitions import ArchiveMetrics
from dicomvault.metrics.http import HttpMetricsMiddleware
from dicomvault.metrics.log_counter import LogCounter
from dicomvault.metrics.subscribers import subscribe_metrics

__all__ = ["ArchiveMetrics", "HttpMetricsMiddleware", "LogCounter", "subscribe_metrics"]
