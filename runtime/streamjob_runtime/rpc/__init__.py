"""TCP messaging between JobManager and TaskManagers: framing and message types."""
