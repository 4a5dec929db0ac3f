"""recon-audit's application layer: the CLI now; the service, reports and dashboards later."""
