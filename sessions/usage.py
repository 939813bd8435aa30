"""Usage figures per tenant for the dashboard (filled in by the usage work)."""
