"""Leadership: only the operator replica holding a Lease runs the handlers (``lease``)."""
