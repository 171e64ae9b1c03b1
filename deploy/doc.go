// Package deploy holds the deployment kit of the registry syncer — a container image
// (Dockerfile), a systemd unit, Kubernetes manifests, Prometheus alert rules and a
// Grafana dashboard — and the tests that check it against the product: the variables it
// sets are the syncer's, the probes are its endpoints, the metrics it queries are the
// ones it exports, and promtool and systemd-analyze accept the files.
package deploy
