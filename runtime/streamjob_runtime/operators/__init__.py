"""Runtime operators: what a task runs for each transformation of the job graph."""
