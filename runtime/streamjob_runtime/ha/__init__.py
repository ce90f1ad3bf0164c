"""JobManager high availability: leader election and fenced HA metadata (etcd, Kubernetes)."""
