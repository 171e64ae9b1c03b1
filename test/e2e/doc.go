// Package e2e holds the end-to-end tests: the real syncer binary against a private PostgreSQL and NATS, with router clients and syncer watch as separate processes.
package e2e
