"""lthn-watchd: heartbeats, the Prometheus endpoint and the audit log file (issue #19)."""
