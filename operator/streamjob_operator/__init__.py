"""streamjob operator: reconciles StreamJob resources into JobManager and TaskManager pods."""
