// Package devstack owns the embedded stack that runs the registry on one machine with
// nothing installed but the PostgreSQL server binaries: a private PostgreSQL cluster
// started from those binaries (initdb, start, stop in every mode, restart, and a clean
// start again after its owner was killed with SIGKILL, stale postmaster.pid and orphaned
// backends included) and an in-process NATS server with JetStream.
//
// `syncer dev` runs it with its data kept in a directory (OpenPostgres, OpenNATS);
// test/harness builds the throwaway instances of the tests on it and adds what only
// tests need (schemas per test, standbys, fault injection, real nats-server binaries).
// Nothing here imports a testing package: the production binary links it.
package devstack
