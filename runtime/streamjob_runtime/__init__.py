"""streamjob runtime: a stream engine with Apache Flink's fault-tolerance model."""

__version__ = "0.1.0"
