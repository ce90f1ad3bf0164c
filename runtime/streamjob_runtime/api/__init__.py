"""The JobManager's REST API: typed models and a client, shared by server, CLI and operator."""
