"""The StreamJob custom resource: pydantic models (the source of the CRD) and lifecycle."""
