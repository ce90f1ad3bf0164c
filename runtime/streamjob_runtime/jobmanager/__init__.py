"""JobManager: schedules jobs on TaskManagers, coordinates checkpoints, recovers failures."""
